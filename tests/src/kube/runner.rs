//! Running one pod for real, as a kubelet would, in the smallest honest
//! way: its volumes, init containers one by one to completion (native
//! sidecars, `restartPolicy: Always`, started and waited for until their
//! startup probe passes), then its containers; readiness and startup probes
//! from the node; restarts by the pod's `restartPolicy` (a fixed one-second
//! back-off); the status written back as it changes; and on deletion,
//! SIGTERM, the grace period (capped at 5 s), SIGKILL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use k8s_openapi::api::core::v1::Pod as ApiPod;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use super::container::{self, Mount};
use super::env::{self, Inputs};
use super::probes::{self, Outcome, Timing};
use super::stand_in::{NODE_NAME, Shared, now};
use super::status::{ContainerRun, PodRun, State};
use super::{hosts, images, volumes};
use crate::node::Pod;

/// Why a pod's runner stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The API pod is being deleted with this grace period: terminate its
    /// containers, then finish the deletion.
    Delete(Duration),
    /// The API pod is gone already: kill what runs.
    Kill,
}

/// The longest grace period the stand-in waits (a test need not wait 30 s).
const MAX_GRACE: Duration = Duration::from_secs(5);
/// How often the runner looks at its containers.
const TICK: Duration = Duration::from_millis(100);
/// How long volumes may wait for what they need (a ConfigMap that a
/// controller writes soon, say) before that counts as an error.
const MOUNT_PATIENCE: Duration = Duration::from_secs(15);
/// The (fixed) back-off before a container restarts.
const BACKOFF: Duration = Duration::from_secs(1);

/// A runner: one task on the stand-in's runtime.
pub struct Runner {
    pub shared: Arc<Shared>,
    pub client: ::kube::Client,
    pub pod: ApiPod,
    pub harness: Arc<Pod>,
    pub state: Arc<Mutex<PodRun>>,
    pub stop: tokio::sync::watch::Receiver<Option<Stop>>,
    pub bind: bool,
    pub dir: PathBuf,
    pub volumes: BTreeMap<String, volumes::Materialized>,
    pub last: Value,
    pub reported: std::collections::HashSet<String>,
}

impl Runner {
    fn ns(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }

    fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }

    fn api(&self) -> Api<ApiPod> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    fn stopping(&self) -> Option<Stop> {
        *self.stop.borrow()
    }

    /// Records an error for the test to see (once per message).
    fn error(&mut self, e: String) {
        let e = format!("pod {}/{}: {e}", self.ns(), self.name());
        if self.reported.insert(e.clone()) {
            self.shared.error(e);
        }
    }

    /// Sleeps for `d` or until told to stop.
    async fn sleep(&mut self, d: Duration) {
        if self.stopping().is_some() {
            return;
        }
        let _ = tokio::time::timeout(d, self.stop.changed()).await;
    }

    /// Writes the status if it changed since the last write.
    async fn patch(&mut self) {
        let status = self.state.lock().expect("pod state").status();
        if status == self.last {
            return;
        }
        let name = self.name().to_string();
        match self
            .api()
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
        {
            Ok(_) => self.last = status,
            // Gone: the runner will be told to stop.
            Err(::kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => self.error(format!("writing its status: {e}")),
        }
    }

    /// The whole life of the pod on the node.
    pub async fn run(mut self) {
        if let Err(e) = self.start().await {
            self.error(e);
        }
        let stop = loop {
            if let Some(s) = self.stopping() {
                break s;
            }
            if self.stop.changed().await.is_err() {
                break Stop::Kill;
            }
        };
        self.finish(stop).await;
    }

    /// Everything up to the pod's end (a terminal phase, or a stop).
    async fn start(&mut self) -> Result<(), String> {
        if self.bind {
            let name = self.name().to_string();
            let binding = json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name, "namespace": self.ns()},
                "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
            });
            let _: Value = self
                .api()
                .create_subresource("binding", &name, &PostParams::default(), &binding)
                .await
                .map_err(|e| format!("binding it to {NODE_NAME}: {e}"))?;
        }
        self.patch().await;
        // The Service environment and hosts file need the Services.
        let mut synced = self.shared.synced.subscribe();
        while !*synced.borrow_and_update() {
            if self.stopping().is_some() {
                return Ok(());
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), synced.changed()).await;
        }
        self.prepare_dir()?;
        if !self.mount_volumes().await {
            return Ok(());
        }
        if !self.run_init_containers().await {
            return Ok(());
        }
        let apps: Vec<usize> = self.indices(|c| !c.init);
        for i in apps {
            if let Err(e) = self.start_container(i).await {
                self.fail_start(i, e).await;
                return Ok(());
            }
        }
        self.state.lock().expect("pod state").phase = "Running";
        self.patch().await;
        self.supervise().await;
        Ok(())
    }

    fn indices(&self, f: impl Fn(&ContainerRun) -> bool) -> Vec<usize> {
        let st = self.state.lock().expect("pod state");
        (0..st.containers.len())
            .filter(|i| f(&st.containers[*i]))
            .collect()
    }

    /// The pod's folder: its hosts file and resolv.conf.
    fn prepare_dir(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        let (ip, host_ip) = {
            let st = self.state.lock().expect("pod state");
            (st.ip, st.host_ip)
        };
        let hostname = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| self.name().to_string());
        self.shared
            .network
            .lock()
            .expect("network lock")
            .add_hosts(self.dir.join("hosts"), self.ns(), ip, &hostname)?;
        hosts::write_in_place(
            &self.dir.join("resolv.conf"),
            &hosts::resolv_conf(self.ns(), host_ip),
        )
    }

    /// Materializes the volumes, retrying (as a kubelet does) while
    /// something they need is missing (the reason is in the pod's status
    /// message, and an error once it lasted [`MOUNT_PATIENCE`]); false when
    /// stopped first.
    async fn mount_volumes(&mut self) -> bool {
        let (ip, host_ip) = {
            let st = self.state.lock().expect("pod state");
            (st.ip, st.host_ip)
        };
        if let Err(e) = volumes::check(&self.pod) {
            self.state.lock().expect("pod state").message = Some(format!("FailedMount: {e}"));
            self.patch().await;
            self.error(e);
            return false;
        }
        let since = Instant::now();
        loop {
            let dir = self.dir.join("volumes");
            match volumes::materialize(&self.client, &self.pod, ip, host_ip, &dir).await {
                Ok(v) => {
                    self.volumes = v;
                    self.state.lock().expect("pod state").message = None;
                    return true;
                }
                Err(e) => {
                    self.state.lock().expect("pod state").message =
                        Some(format!("FailedMount: {e}"));
                    self.patch().await;
                    if since.elapsed() > MOUNT_PATIENCE {
                        self.error(format!("volumes (still retrying): {e}"));
                    }
                }
            }
            self.sleep(Duration::from_millis(250)).await;
            if self.stopping().is_some() {
                return false;
            }
        }
    }

    /// Init containers in order; false when the pod cannot go on.
    async fn run_init_containers(&mut self) -> bool {
        let inits = self.indices(|c| c.init);
        let never = self.restart_policy() == "Never";
        for i in inits {
            loop {
                if self.stopping().is_some() {
                    return false;
                }
                if let Err(e) = self.start_container(i).await {
                    self.fail_start(i, e).await;
                    return false;
                }
                self.patch().await;
                let sidecar = self.state.lock().expect("pod state").containers[i].sidecar;
                if sidecar {
                    match self.wait_started(i).await {
                        Some(true) => break,
                        Some(false) => continue,
                        None => return false,
                    }
                }
                let Some(code) = self.wait_exit(i).await else {
                    return false;
                };
                if code == 0 {
                    break;
                }
                let name = self.state.lock().expect("pod state").containers[i]
                    .spec
                    .name
                    .clone();
                self.error(format!("init container {name} exited with {code}"));
                if never {
                    self.set_failed(
                        "Init:Error",
                        format!("init container {name} exited with {code}"),
                    );
                    self.patch().await;
                    return false;
                }
                self.state.lock().expect("pod state").containers[i].restarts += 1;
                self.patch().await;
                self.sleep(BACKOFF).await;
            }
        }
        self.state.lock().expect("pod state").initialized = true;
        self.patch().await;
        true
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn set_failed(&mut self, reason: &str, message: String) {
        let mut st = self.state.lock().expect("pod state");
        st.phase = "Failed";
        st.reason = Some(reason.to_string());
        st.message = Some(message);
        for c in &mut st.containers {
            c.ready = false;
        }
    }

    /// A container that could not start (an unknown image, a bad
    /// environment): waiting with the reason, as on a kubelet, and an error.
    async fn fail_start(&mut self, i: usize, e: String) {
        self.error(e.clone());
        {
            let mut st = self.state.lock().expect("pod state");
            let reason = if e.contains("is unknown to the kubelet stand-in") {
                "ErrImagePull"
            } else {
                "CreateContainerConfigError"
            };
            st.containers[i].state = State::Waiting {
                reason: reason.into(),
                message: Some(e),
            };
        }
        self.patch().await;
    }

    /// Waits until the exit of container `i`'s process; its exit code, or
    /// `None` when stopped first.
    async fn wait_exit(&mut self, i: usize) -> Option<i32> {
        loop {
            if let Some(code) = self.reap(i) {
                self.patch().await;
                return Some(code);
            }
            if self.stopping().is_some() {
                return None;
            }
            self.sleep(TICK).await;
        }
    }

    /// Probes a sidecar's startup until it passes (`Some(true)`), its
    /// process exits or fails the probe (`Some(false)`: start it again), or
    /// the pod stops (`None`).
    async fn wait_started(&mut self, i: usize) -> Option<bool> {
        loop {
            if self.stopping().is_some() {
                return None;
            }
            if let Some(code) = self.reap(i) {
                self.error(format!("sidecar exited with {code} before it started"));
                self.state.lock().expect("pod state").containers[i].restarts += 1;
                self.patch().await;
                self.sleep(BACKOFF).await;
                return Some(false);
            }
            self.probe(i).await;
            let started = self.state.lock().expect("pod state").containers[i].started;
            self.patch().await;
            if started {
                return Some(true);
            }
            self.sleep(TICK).await;
        }
    }

    /// Notes the exit of container `i`'s process, if it exited: its code.
    fn reap(&mut self, i: usize) -> Option<i32> {
        let mut st = self.state.lock().expect("pod state");
        let c = &mut st.containers[i];
        let State::Running { started_at } = &c.state else {
            return None;
        };
        let status = c.process.as_ref()?.wait_timeout(Duration::ZERO)?;
        let code = status.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
        });
        c.state = State::Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: started_at.clone(),
            finished_at: now(),
        };
        c.ready = false;
        Some(code)
    }

    /// Runs the probes of container `i` that are due, and updates its
    /// `started` and `ready`.
    async fn probe(&mut self, i: usize) {
        let (spec, since, started) = {
            let st = self.state.lock().expect("pod state");
            let c = &st.containers[i];
            if !c.running() {
                return;
            }
            (c.spec.clone(), c.since, c.started)
        };
        let Some(since) = since else { return };
        let (probe, startup) = match (&spec.startup_probe, &spec.readiness_probe, started) {
            (Some(p), _, false) => (p.clone(), true),
            (_, Some(p), true) => (p.clone(), false),
            _ => return,
        };
        let timing = Timing::of(&probe);
        let now = Instant::now();
        {
            let st = self.state.lock().expect("pod state");
            let c = &st.containers[i];
            let ps = if startup { &c.startup } else { &c.readiness };
            if now < since + timing.initial_delay || ps.due.is_some_and(|d| now < d) {
                return;
            }
        }
        let ip = self.state.lock().expect("pod state").ip;
        let node = format!("/run/netns/{}", self.shared.node.bridge().name());
        let outcome = probes::run(node, ip, &spec, &probe).await;
        let mut unsupported = None;
        let mut restart = false;
        {
            let mut st = self.state.lock().expect("pod state");
            let c = &mut st.containers[i];
            let ps = if startup {
                &mut c.startup
            } else {
                &mut c.readiness
            };
            ps.due = Some(Instant::now() + timing.period);
            let pass = match &outcome {
                Outcome::Pass => true,
                Outcome::Fail(why) => {
                    ps.last = Some(why.clone());
                    false
                }
                Outcome::Unsupported(what) => {
                    unsupported = Some(what.clone());
                    true
                }
            };
            if pass {
                ps.failures = 0;
                ps.successes += 1;
                if ps.successes >= timing.success_threshold {
                    ps.passed = true;
                }
            } else {
                ps.successes = 0;
                ps.failures += 1;
                if ps.failures >= timing.failure_threshold {
                    ps.passed = false;
                    restart = startup;
                }
            }
            let passed = ps.passed;
            if startup {
                c.started = passed;
                c.ready = passed && spec.readiness_probe.is_none();
            } else {
                c.ready = passed;
            }
        }
        if let Some(what) = unsupported {
            self.error(format!(
                "container {}: {what} are not run by the kubelet stand-in (counted as passing)",
                spec.name
            ));
        }
        if restart {
            // A startup probe that keeps failing kills the container.
            let mut st = self.state.lock().expect("pod state");
            if let Some(p) = &st.containers[i].process {
                p.signal(Signal::SIGKILL);
            }
            st.containers[i].startup = Default::default();
        }
    }

    /// Watches the running pod: probes, exits and restarts, until it ends
    /// or is told to stop.
    async fn supervise(&mut self) {
        loop {
            if self.stopping().is_some() {
                return;
            }
            let all = self.indices(|_| true);
            for i in &all {
                self.probe(*i).await;
            }
            let policy = self.restart_policy();
            for i in &all {
                let i = *i;
                let (init, sidecar) = {
                    let st = self.state.lock().expect("pod state");
                    (st.containers[i].init, st.containers[i].sidecar)
                };
                if init && !sidecar {
                    continue;
                }
                if let Some(code) = self.reap(i) {
                    let again =
                        sidecar || policy == "Always" || (policy == "OnFailure" && code != 0);
                    if again {
                        let mut st = self.state.lock().expect("pod state");
                        st.containers[i].restart_at = Some(Instant::now() + BACKOFF);
                    }
                }
                let due = self.state.lock().expect("pod state").containers[i]
                    .restart_at
                    .is_some_and(|t| Instant::now() >= t);
                if due {
                    {
                        let mut st = self.state.lock().expect("pod state");
                        st.containers[i].restart_at = None;
                        st.containers[i].restarts += 1;
                    }
                    if let Err(e) = self.start_container(i).await {
                        self.fail_start(i, e).await;
                    }
                }
            }
            if self.settle_phase().await {
                return;
            }
            self.patch().await;
            self.sleep(TICK).await;
        }
    }

    /// Ends the pod when every container finished for good (Succeeded or
    /// Failed; sidecars are then stopped); true if it ended.
    async fn settle_phase(&mut self) -> bool {
        let done = {
            let st = self.state.lock().expect("pod state");
            let apps: Vec<&ContainerRun> = st.containers.iter().filter(|c| !c.init).collect();
            let finished = apps
                .iter()
                .all(|c| matches!(c.state, State::Terminated { .. }) && c.restart_at.is_none());
            finished.then(|| {
                apps.iter()
                    .all(|c| matches!(c.state, State::Terminated { exit_code: 0, .. }))
            })
        };
        let Some(ok) = done else { return false };
        self.terminate(MAX_GRACE).await;
        {
            let mut st = self.state.lock().expect("pod state");
            st.phase = if ok { "Succeeded" } else { "Failed" };
            for c in &mut st.containers {
                c.ready = false;
            }
        }
        self.patch().await;
        true
    }

    /// Starts container `i`: its image's binary, environment, mounts and
    /// user.
    async fn start_container(&mut self, i: usize) -> Result<(), String> {
        let (spec, restarts, ip, host_ip) = {
            let st = self.state.lock().expect("pod state");
            let c = &st.containers[i];
            (c.spec.clone(), c.restarts, st.ip, st.host_ip)
        };
        let reference = spec.image.clone().unwrap_or_default();
        let image = images::lookup(&reference)?;
        let services: Vec<_> = self
            .shared
            .network
            .lock()
            .expect("network lock")
            .services
            .values()
            .cloned()
            .collect();
        let inputs = Inputs {
            client: &self.client,
            pod: &self.pod,
            ip,
            host_ip,
            services: &services,
        };
        let env = env::container_env(&inputs, image, &spec)
            .await
            .map_err(|e| format!("container {}: {e}", spec.name))?;
        let (program, args) = images::argv(image, &spec, &env)?;
        let mut mounts = Vec::new();
        for vm in spec.volume_mounts.iter().flatten() {
            let v = self
                .volumes
                .get(&vm.name)
                .ok_or_else(|| format!("container {}: no volume named {}", spec.name, vm.name))?;
            let mut source = v.dir.clone();
            if let Some(sub) = vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                source = source.join(sub);
                if !source.exists() {
                    std::fs::create_dir_all(&source).map_err(|e| e.to_string())?;
                }
            }
            mounts.push(Mount {
                source,
                target: vm.mount_path.clone(),
                read_only: vm.read_only.unwrap_or(false),
            });
        }
        for (file, target) in [("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf")] {
            if !mounts
                .iter()
                .any(|m| Path::new(&m.target) == Path::new(target))
            {
                mounts.push(Mount {
                    source: self.dir.join(file),
                    target: target.into(),
                    read_only: false,
                });
            }
        }
        let pod_sc = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref());
        let sc = spec.security_context.as_ref();
        let uid = sc
            .and_then(|s| s.run_as_user)
            .or(pod_sc.and_then(|s| s.run_as_user))
            .map(|u| u as u32)
            .or(image.user)
            .unwrap_or(0);
        let gid = sc
            .and_then(|s| s.run_as_group)
            .or(pod_sc.and_then(|s| s.run_as_group))
            .map(|g| g as u32)
            .unwrap_or(0);
        let mut groups: Vec<u32> = pod_sc
            .and_then(|s| s.supplemental_groups.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|g| g as u32)
            .collect();
        groups.extend(pod_sc.and_then(|s| s.fs_group).map(|g| g as u32));
        let name = match restarts {
            0 => spec.name.clone(),
            n => format!("{}.{n}", spec.name),
        };
        let cspec = container::Spec {
            name: name.clone(),
            dir: self.dir.join("containers").join(&name),
            mounts,
            uid,
            gid,
            groups,
            program,
            args,
            env,
            working_dir: spec.working_dir.clone(),
        };
        let harness = self.harness.clone();
        let process = tokio::task::spawn_blocking(move || container::start(&harness, cspec))
            .await
            .map_err(|e| format!("starting container {}: {e}", spec.name))??;
        // The log, also under a name a person would look for.
        let pods = self.shared.node.logs().join("pods");
        let _ = std::fs::create_dir_all(&pods);
        let _ = std::os::unix::fs::symlink(
            self.shared
                .node
                .logs()
                .join(format!("{}-{name}.log", self.harness.name)),
            pods.join(format!("{}_{}_{name}.log", self.ns(), self.name())),
        );
        let mut st = self.state.lock().expect("pod state");
        let c = &mut st.containers[i];
        c.process = Some(process);
        c.state = State::Running { started_at: now() };
        c.since = Some(Instant::now());
        c.started = spec.startup_probe.is_none();
        c.ready = c.started && spec.readiness_probe.is_none() && (!c.init || c.sidecar);
        c.readiness = Default::default();
        c.startup = Default::default();
        Ok(())
    }

    /// SIGTERM to the containers (the app containers first, then native
    /// sidecars in reverse order), SIGKILL to what still runs at the end of
    /// `grace` (capped at [`MAX_GRACE`]).
    async fn terminate(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace.min(MAX_GRACE);
        let apps = self.indices(|c| !c.init);
        let mut sidecars = self.indices(|c| c.sidecar);
        sidecars.reverse();
        for group in [apps, sidecars] {
            for i in &group {
                let st = self.state.lock().expect("pod state");
                let c = &st.containers[*i];
                if c.running()
                    && let Some(p) = &c.process
                {
                    p.signal(Signal::SIGTERM);
                }
            }
            while Instant::now() < deadline {
                for i in &group {
                    self.reap(*i);
                }
                let running = {
                    let st = self.state.lock().expect("pod state");
                    group.iter().any(|i| st.containers[*i].running())
                };
                if !running {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let all = self.indices(|_| true);
        for i in all {
            let p = {
                let st = self.state.lock().expect("pod state");
                let c = &st.containers[i];
                if c.running() { c.process.clone() } else { None }
            };
            if let Some(p) = p {
                p.signal(Signal::SIGKILL);
                let _ = tokio::task::spawn_blocking(move || p.wait_timeout(Duration::from_secs(5)))
                    .await;
                self.reap(i);
            }
            self.state.lock().expect("pod state").containers[i].restart_at = None;
        }
    }

    /// The end: containers terminated, the pod taken off the node, and a
    /// deletion finished.
    async fn finish(&mut self, stop: Stop) {
        let grace = match stop {
            Stop::Delete(g) => g,
            Stop::Kill => Duration::ZERO,
        };
        self.terminate(grace).await;
        let uid = self.pod.metadata.uid.clone().unwrap_or_default();
        let key = (self.ns().to_string(), self.name().to_string());
        self.shared
            .network
            .lock()
            .expect("network lock")
            .remove_hosts(&self.dir.join("hosts"));
        self.shared.stop(&key, Some(&uid));
        if stop == Stop::Kill {
            return;
        }
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let name = self.name().to_string();
        match self.api().delete(&name, &dp).await {
            Ok(_) => {}
            Err(::kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => self.error(format!("finishing its deletion: {e}")),
        }
    }
}
