//! Container images, as the kubelet stand-in knows them: there is no
//! container runtime and no registry, so an image is a row of a fixed table
//! that names the binary under test it runs, the path that binary has inside
//! the real image (what a pod's `command` names), and what the real image's
//! config would add (environment, user). Everything else of a real image
//! (its filesystem, its libraries) is the host's: a container's root is a
//! private view of the host's `/`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Container;

use crate::bins;

/// One known image.
#[derive(Clone, Debug)]
pub struct Image {
    /// The repository's last path segment (`weft-proxy`, `jaeger`).
    pub name: &'static str,
    /// The binary's path inside the real image (its entrypoint).
    pub entrypoint: &'static str,
    /// `ENV` of the real image.
    pub env: &'static [(&'static str, &'static str)],
    /// `USER` of the real image (root when `None`).
    pub user: Option<u32>,
    /// Where the binary is on this machine.
    pub binary: fn() -> PathBuf,
}

fn jaeger() -> PathBuf {
    super::tools::jaeger().to_path_buf()
}

/// The table: the Rust binaries of this workspace and Jaeger.
pub const IMAGES: &[Image] = &[
    Image {
        name: "weft-proxy",
        entrypoint: "/weft-proxy",
        env: &[],
        user: None,
        binary: bins::proxy,
    },
    // The injector's init image: the proxy binary (`weft-proxy init`).
    Image {
        name: "weft-init",
        entrypoint: "/weft-proxy",
        env: &[],
        user: None,
        binary: bins::proxy,
    },
    Image {
        name: "weft-control",
        entrypoint: "/weft-control",
        env: &[],
        user: None,
        binary: bins::control,
    },
    Image {
        name: "weft-test-app",
        entrypoint: "/weft-test-app",
        env: &[],
        user: None,
        binary: bins::test_app,
    },
    // jaegertracing/jaeger (v2): as its Dockerfile says.
    Image {
        name: "jaeger",
        entrypoint: "/cmd/jaeger/jaeger-linux",
        env: &[("JAEGER_LISTEN_HOST", "0.0.0.0")],
        user: Some(10001),
        binary: jaeger,
    },
];

/// The image named by `reference` (`[registry/]path/name[:tag][@digest]`),
/// by the last segment of its repository.
pub fn lookup(reference: &str) -> Result<&'static Image, String> {
    let without_digest = reference.split('@').next().unwrap_or_default();
    let last = without_digest.rsplit('/').next().unwrap_or_default();
    let name = last.split(':').next().unwrap_or_default();
    IMAGES.iter().find(|i| i.name == name).ok_or_else(|| {
        let known: Vec<&str> = IMAGES.iter().map(|i| i.name).collect();
        format!(
            "image {reference:?} is unknown to the kubelet stand-in (it runs only the images \
             {known:?}, as binaries of this machine)"
        )
    })
}

/// The program and arguments a container runs: `command` (else the image's
/// entrypoint) and `args`, with `$(VAR)` expanded from `env` as Kubernetes
/// does. The command's first element must be the image's binary (by its
/// path in the image, or its file name).
pub fn argv(
    image: &Image,
    c: &Container,
    env: &BTreeMap<String, String>,
) -> Result<(PathBuf, Vec<String>), String> {
    let command: Vec<String> = match &c.command {
        Some(cmd) if !cmd.is_empty() => cmd.iter().map(|s| expand(s, env)).collect(),
        _ => vec![image.entrypoint.to_string()],
    };
    let file = |p: &str| p.rsplit('/').next().unwrap_or_default().to_string();
    if command[0] != image.entrypoint && file(&command[0]) != file(image.entrypoint) {
        return Err(format!(
            "container {}: image {} holds only {} (as a binary of this machine), not {:?}",
            c.name, image.name, image.entrypoint, command[0]
        ));
    }
    let mut args: Vec<String> = command[1..].to_vec();
    args.extend(
        c.args
            .iter()
            .flatten()
            .map(|a| expand(a, env))
            .collect::<Vec<_>>(),
    );
    Ok(((image.binary)(), args))
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an
/// undefined one is left as written, and `$$` is a literal `$`.
pub fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ignore_registry_tag_and_digest() {
        assert_eq!(
            lookup("jaegertracing/jaeger:2.13.0").unwrap().name,
            "jaeger"
        );
        assert_eq!(
            lookup("ghcr.io/weft/weft-proxy:0.1.0@sha256:00")
                .unwrap()
                .name,
            "weft-proxy"
        );
        assert_eq!(
            lookup("localhost:5000/weft-init").unwrap().name,
            "weft-init"
        );
        assert!(lookup("nginx:1.27").unwrap_err().contains("nginx"));
    }

    #[test]
    fn expansion_is_kubernetes_like() {
        let env: BTreeMap<String, String> = [("A".to_string(), "x".to_string())].into();
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
        assert_eq!(expand("a$(A", &env), "a$(A");
    }
}
