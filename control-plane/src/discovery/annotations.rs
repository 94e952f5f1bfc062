//! Weft's `weft.dev/*` annotations: their names, what their values mean,
//! and the check both sources run on a Pod, Service or Namespace.

use std::collections::BTreeMap;

use weft_api::v1::MtlsMode;

/// A Pod with this annotation (or label) set to `enabled` runs a sidecar; a
/// Namespace with this label has its pods injected.
pub const INJECT: &str = "weft.dev/inject";
/// mTLS mode override (`strict` or `permissive`) on a Pod, Service or Namespace.
pub const MTLS_MODE_ANNOTATION: &str = "weft.dev/mtls-mode";
/// Ports never sniffed (comma-separated numbers) on a Pod, Service or Namespace.
pub const OPAQUE_PORTS_ANNOTATION: &str = "weft.dev/opaque-ports";

/// Services a Pod's proxy receives from its start, before the app uses
/// them (comma-separated: `db`, `db.shop`, `db.shop.svc.cluster.local`).
/// Not an access list: any Service can still be called, and is then
/// subscribed on first use.
pub const DEPENDENCIES_ANNOTATION: &str = "weft.dev/dependencies";

/// A dependencies annotation's value, as "namespace/name" keys (a bare name
/// is in `namespace`). Errors name the item.
pub fn parse_dependencies(v: &str, namespace: &str) -> Result<Vec<String>, String> {
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    let mut keys: Vec<String> = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let parts: Vec<&str> = item.trim_end_matches('.').split('.').collect();
        let (name, ns) = match parts.as_slice() {
            [name] => (*name, namespace),
            [name, ns] => (*name, *ns),
            [name, ns, "svc", ..] => (*name, *ns),
            _ => ("", ""),
        };
        if !label(name) || !label(ns) {
            return Err(format!(
                "`{item}` is not a Service (name, name.namespace or name.namespace.svc.<domain>)"
            ));
        }
        keys.push(format!("{ns}/{name}"));
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// What a Namespace's pods do when no AuthorizationPolicy decides
/// (`allow`, `all-authenticated`, `deny`), over the mesh's default.
pub const DEFAULT_AUTHZ_ANNOTATION: &str = "weft.dev/default-authz";

/// A default-authz annotation's (or flag's) value.
pub fn parse_default_authz(v: &str) -> Option<weft_api::v1::DefaultAuthz> {
    use weft_api::v1::DefaultAuthz;
    match v {
        "allow" => Some(DefaultAuthz::Allow),
        "all-authenticated" => Some(DefaultAuthz::AllAuthenticated),
        "deny" => Some(DefaultAuthz::Deny),
        _ => None,
    }
}

/// An mTLS mode annotation's value (validated by the sources).
pub fn parse_mtls_mode(v: &str) -> Option<MtlsMode> {
    match v {
        "strict" => Some(MtlsMode::Strict),
        "permissive" => Some(MtlsMode::Permissive),
        _ => None,
    }
}

/// An opaque-ports annotation's value: `"25,3306"`. Errors name the item.
pub fn parse_ports(v: &str) -> Result<Vec<u16>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("`{s}` is not a port (1-65535)")),
        })
        .collect()
}

/// Weft's annotations (`weft.dev/mtls-mode`, `weft.dev/opaque-ports`,
/// `weft.dev/default-authz`, `weft.dev/dependencies`) on a Pod, Service or
/// Namespace.
pub fn validate_annotations(
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<(), (String, String)> {
    let Some(a) = annotations else {
        return Ok(());
    };
    if let Some(mode) = a.get(MTLS_MODE_ANNOTATION)
        && parse_mtls_mode(mode).is_none()
    {
        return Err((
            format!("metadata.annotations.{MTLS_MODE_ANNOTATION}"),
            format!("`{mode}` is not an mTLS mode (strict or permissive)"),
        ));
    }
    if let Some(v) = a.get(DEFAULT_AUTHZ_ANNOTATION)
        && parse_default_authz(v).is_none()
    {
        return Err((
            format!("metadata.annotations.{DEFAULT_AUTHZ_ANNOTATION}"),
            format!("`{v}` is not a default (allow, all-authenticated or deny)"),
        ));
    }
    if let Some(deps) = a.get(DEPENDENCIES_ANNOTATION) {
        parse_dependencies(deps, "default")
            .map_err(|e| (format!("metadata.annotations.{DEPENDENCIES_ANNOTATION}"), e))?;
    }
    if let Some(ports) = a.get(OPAQUE_PORTS_ANNOTATION) {
        parse_ports(ports)
            .map_err(|e| (format!("metadata.annotations.{OPAQUE_PORTS_ANNOTATION}"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_name_services_in_any_dns_form() {
        assert_eq!(
            parse_dependencies("db, web.shop ,api.edge.svc.cluster.local,db", "shop").unwrap(),
            ["edge/api", "shop/db", "shop/web"]
        );
        assert_eq!(
            parse_dependencies("", "shop").unwrap(),
            Vec::<String>::new()
        );
        let err = parse_dependencies("db, Bad_Name", "shop").unwrap_err();
        assert!(err.contains("`Bad_Name`"), "{err}");
        assert!(parse_dependencies("a.b.c", "shop").is_err());
    }
}
