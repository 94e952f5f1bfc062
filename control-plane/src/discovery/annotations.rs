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
    if let Some(ports) = a.get(OPAQUE_PORTS_ANNOTATION) {
        parse_ports(ports)
            .map_err(|e| (format!("metadata.annotations.{OPAQUE_PORTS_ANNOTATION}"), e))?;
    }
    Ok(())
}
