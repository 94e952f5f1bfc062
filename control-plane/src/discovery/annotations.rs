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

/// Weft's annotations (`weft.dev/mtls-mode`, `weft.dev/opaque-ports`) on a
/// Pod, Service or Namespace.
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
    if let Some(ports) = a.get(OPAQUE_PORTS_ANNOTATION) {
        parse_ports(ports)
            .map_err(|e| (format!("metadata.annotations.{OPAQUE_PORTS_ANNOTATION}"), e))?;
    }
    Ok(())
}
