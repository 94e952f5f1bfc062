//! What the kubelet stand-in knows about a pod it runs, and the pod
//! `status` (phase, IPs, conditions, container statuses) it writes from
//! that, in the shape a kubelet writes, so that `kubectl get pods` reads
//! right (`Init:0/2`, `1/2 Running`, `Completed`, `Error`, …).

use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Container;
use serde_json::{Value, json};

use crate::process::Process;

/// A container's state.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Value,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: Option<String>,
        started_at: Value,
        finished_at: Value,
    },
}

/// Readiness or startup probe bookkeeping.
#[derive(Clone, Debug, Default)]
pub struct ProbeState {
    pub successes: u32,
    pub failures: u32,
    pub passed: bool,
    pub last: Option<String>,
    /// When it runs next.
    pub due: Option<std::time::Instant>,
}

/// One container of the pod, init containers included.
#[derive(Clone, Debug)]
pub struct ContainerRun {
    pub spec: Container,
    pub init: bool,
    /// An init container with `restartPolicy: Always` (a native sidecar).
    pub sidecar: bool,
    pub state: State,
    pub ready: bool,
    pub started: bool,
    pub restarts: u32,
    pub process: Option<Arc<Process>>,
    pub readiness: ProbeState,
    pub startup: ProbeState,
    /// When the current process started (for probes' initial delay).
    pub since: Option<std::time::Instant>,
    /// When it starts again after exiting.
    pub restart_at: Option<std::time::Instant>,
}

impl ContainerRun {
    pub fn new(spec: Container, init: bool) -> ContainerRun {
        let sidecar = init && spec.restart_policy.as_deref() == Some("Always");
        let reason = if init {
            "PodInitializing"
        } else {
            "ContainerCreating"
        };
        ContainerRun {
            spec,
            init,
            sidecar,
            state: State::Waiting {
                reason: reason.into(),
                message: None,
            },
            ready: false,
            started: false,
            restarts: 0,
            process: None,
            readiness: ProbeState::default(),
            startup: ProbeState::default(),
            since: None,
            restart_at: None,
        }
    }

    pub fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }
}

/// The pod as the stand-in runs it.
#[derive(Debug)]
pub struct PodRun {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    pub phase: &'static str,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub start_time: Value,
    pub initialized: bool,
    pub containers: Vec<ContainerRun>,
    /// Condition type → (status, lastTransitionTime).
    pub transitions: std::collections::BTreeMap<&'static str, (bool, Value)>,
}

impl PodRun {
    /// Every regular container and native sidecar is ready.
    pub fn containers_ready(&self) -> bool {
        self.containers
            .iter()
            .filter(|c| !c.init || c.sidecar)
            .all(|c| c.ready)
    }

    /// The `status` merge patch for the current state.
    pub fn status(&mut self) -> Value {
        let now = super::stand_in::now();
        let started =
            self.phase != "Pending" || self.containers.iter().any(|c| c.process.is_some());
        let conditions = [
            ("PodReadyToStartContainers", started || self.initialized),
            ("PodScheduled", true),
            ("Initialized", self.initialized),
            (
                "ContainersReady",
                self.containers_ready() && self.phase == "Running",
            ),
            ("Ready", self.containers_ready() && self.phase == "Running"),
        ];
        let mut conds = Vec::new();
        for (t, s) in conditions {
            let entry = self
                .transitions
                .entry(t)
                .or_insert_with(|| (s, now.clone()));
            if entry.0 != s {
                *entry = (s, now.clone());
            }
            let mut c = json!({
                "type": t,
                "status": if s { "True" } else { "False" },
                "lastProbeTime": null,
                "lastTransitionTime": entry.1,
            });
            if !s && (t == "ContainersReady" || t == "Ready") {
                let unready: Vec<&str> = self
                    .containers
                    .iter()
                    .filter(|c| (!c.init || c.sidecar) && !c.ready)
                    .map(|c| c.spec.name.as_str())
                    .collect();
                c["reason"] = json!("ContainersNotReady");
                c["message"] = json!(format!("containers with unready status: {unready:?}"));
            }
            conds.push(c);
        }
        let statuses = |init: bool| -> Vec<Value> {
            self.containers
                .iter()
                .filter(|c| c.init == init)
                .map(|c| container_status(&self.namespace, &self.name, c))
                .collect()
        };
        let host = self.host_ip.to_string();
        let ip = self.ip.to_string();
        let mut status = json!({
            "phase": self.phase,
            "hostIP": host,
            "hostIPs": [{"ip": host}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": self.start_time,
            "conditions": conds,
            "containerStatuses": statuses(false),
            "initContainerStatuses": statuses(true),
            "reason": self.reason,
            "message": self.message,
        });
        if self.containers.iter().all(|c| !c.init)
            && let Some(o) = status.as_object_mut()
        {
            o.remove("initContainerStatuses");
        }
        json!({ "status": status })
    }
}

fn container_status(ns: &str, pod: &str, c: &ContainerRun) -> Value {
    let state = match &c.state {
        State::Waiting { reason, message } => {
            json!({"waiting": {"reason": reason, "message": message}})
        }
        State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
        State::Terminated {
            exit_code,
            reason,
            message,
            started_at,
            finished_at,
        } => json!({"terminated": {
            "exitCode": exit_code,
            "reason": reason,
            "message": message,
            "startedAt": started_at,
            "finishedAt": finished_at,
            "containerID": container_id(ns, pod, c),
        }}),
    };
    let mut s = json!({
        "name": c.spec.name,
        "image": c.spec.image.clone().unwrap_or_default(),
        "imageID": "",
        "ready": c.ready,
        "started": c.started,
        "restartCount": c.restarts,
        "state": state,
    });
    if !matches!(c.state, State::Waiting { .. }) {
        s["containerID"] = json!(container_id(ns, pod, c));
    }
    s
}

fn container_id(ns: &str, pod: &str, c: &ContainerRun) -> String {
    format!(
        "weft-e2e://{ns}/{pod}/{}/{}",
        c.spec.name,
        c.process.as_ref().map(|p| p.pid()).unwrap_or_default()
    )
}
