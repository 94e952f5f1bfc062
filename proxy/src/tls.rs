//! mTLS on the data path: the outbound side opens TLS 1.3 to a meshed peer and
//! checks it is the workload expected there; the inbound side tells TLS from
//! plaintext by peeking (no byte lost), terminates mTLS, and learns the
//! client's identity.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::ValueEnum;
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, Error as TlsErr, OtherError};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};
use weft_api::SpiffeId;
use weft_api::tls::{self as wtls, ForeignIdentity, IdentityMismatch};

use crate::identity::Identity;

/// Whether the inbound side accepts plaintext. Meshed clients always speak
/// mTLS; this only decides what happens to everyone else.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum MtlsMode {
    /// Plaintext is served too (un-meshed clients, health checks): the default,
    /// as in Istio and Linkerd, so a mesh can be adopted gradually.
    #[default]
    Permissive,
    /// Only mTLS from a workload of this trust domain.
    Strict,
}

/// Why a TLS connection failed, as a metric label and a log field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsFailure {
    IdentityMismatch,
    ForeignIdentity,
    UntrustedCertificate,
    NoClientCertificate,
    PlaintextRefused,
    Timeout,
    Other,
}

impl TlsFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::IdentityMismatch => "identity_mismatch",
            TlsFailure::ForeignIdentity => "foreign_identity",
            TlsFailure::UntrustedCertificate => "untrusted_certificate",
            TlsFailure::NoClientCertificate => "no_client_certificate",
            TlsFailure::PlaintextRefused => "plaintext_refused",
            TlsFailure::Timeout => "timeout",
            TlsFailure::Other => "other",
        }
    }

    /// Classifies a handshake error.
    pub fn of(e: &io::Error) -> TlsFailure {
        let Some(err) = wtls::rustls_error(e) else {
            return TlsFailure::Other;
        };
        match err {
            TlsErr::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                if inner.downcast_ref::<IdentityMismatch>().is_some() {
                    TlsFailure::IdentityMismatch
                } else if inner.downcast_ref::<ForeignIdentity>().is_some() {
                    TlsFailure::ForeignIdentity
                } else {
                    TlsFailure::UntrustedCertificate
                }
            }
            TlsErr::InvalidCertificate(_) => TlsFailure::UntrustedCertificate,
            TlsErr::NoCertificatesPresented => TlsFailure::NoClientCertificate,
            TlsErr::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
                TlsFailure::NoClientCertificate
            }
            TlsErr::AlertReceived(
                rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::UnknownCA
                | rustls::AlertDescription::CertificateUnknown,
            ) => TlsFailure::UntrustedCertificate,
            _ => TlsFailure::Other,
        }
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What travels inside a sidecar-to-sidecar TLS connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// Opaque bytes.
    Tcp,
    /// Multiplexed HTTP/2 requests.
    H2,
    /// One HTTP/1.1 request that upgrades the connection.
    Http1,
}

impl Alpn {
    fn id(self) -> &'static [u8] {
        match self {
            Alpn::Tcp => wtls::ALPN_TCP,
            Alpn::H2 => wtls::ALPN_H2,
            Alpn::Http1 => wtls::ALPN_HTTP1,
        }
    }
}

/// The client side of sidecar-to-sidecar mTLS.
#[derive(Debug)]
pub struct OutboundTls {
    identity: Identity,
    /// One client config per expected identity, built once: the certificate
    /// and the anchors inside are swapped in place, so configs never go stale.
    configs: Mutex<HashMap<(SpiffeId, Alpn), Arc<ClientConfig>>>,
}

impl OutboundTls {
    pub fn new(identity: Identity) -> Self {
        OutboundTls {
            identity,
            configs: Mutex::new(HashMap::new()),
        }
    }

    fn config(&self, expected: &SpiffeId, alpn: Alpn) -> Result<Arc<ClientConfig>, io::Error> {
        let mut configs = self
            .configs
            .lock()
            .map_err(|_| io::Error::other("TLS config cache poisoned"))?;
        let key = (expected.clone(), alpn);
        if let Some(c) = configs.get(&key) {
            return Ok(c.clone());
        }
        let cfg = Arc::new(
            wtls::client_config(
                self.identity.cert.clone(),
                self.identity.anchors.clone(),
                expected.clone(),
                &[alpn.id()],
            )
            .map_err(io::Error::other)?,
        );
        configs.insert(key, cfg.clone());
        Ok(cfg)
    }

    /// Opens TLS 1.3 over `tcp` and checks the server is `expected`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        dst: SocketAddr,
        expected: &SpiffeId,
        alpn: Alpn,
    ) -> io::Result<client::TlsStream<TcpStream>> {
        let config = self.config(expected, alpn)?;
        // An IP server name sends no SNI; the verifier checks the SPIFFE ID.
        TlsConnector::from(config)
            .connect(ServerName::IpAddress(dst.ip().into()), tcp)
            .await
    }
}

/// What the inbound side found on a connection.
#[derive(Debug)]
pub enum Accepted {
    Tls(Box<server::TlsStream<TcpStream>>, SpiffeId),
    /// Plaintext, and whether the client spoke first (only then is it
    /// worth looking for HTTP).
    Plain(TcpStream, bool),
}

/// The server side of sidecar-to-sidecar mTLS.
pub struct InboundTls {
    acceptor: TlsAcceptor,
    detect_timeout: Duration,
}

impl fmt::Debug for InboundTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundTls")
            .field("detect_timeout", &self.detect_timeout)
            .finish_non_exhaustive()
    }
}

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

impl InboundTls {
    pub fn new(identity: &Identity, detect_timeout: Duration) -> Result<Self, wtls::TlsError> {
        let cfg = wtls::server_config(
            identity.cert.clone(),
            identity.anchors.clone(),
            identity.trust_domain(),
            true,
            &[wtls::ALPN_TCP, wtls::ALPN_H2, wtls::ALPN_HTTP1],
        )?;
        Ok(InboundTls {
            acceptor: TlsAcceptor::from(Arc::new(cfg)),
            detect_timeout,
        })
    }

    /// Peeks at the first byte: a TLS handshake is terminated (client
    /// certificate required), anything else is plaintext, served only in
    /// permissive mode. A client that says nothing within the detect timeout
    /// is plaintext too (a server-speaks-first protocol). With
    /// `skip_detection` (an opaque port, a client that is not a meshed pod)
    /// nothing is peeked at, so a server-speaks-first protocol never waits.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        mode: MtlsMode,
        skip_detection: bool,
    ) -> Result<Accepted, (TlsFailure, io::Error)> {
        let mut first = [0u8; 1];
        let peeked = match mode {
            _ if skip_detection => None,
            MtlsMode::Permissive => tokio::time::timeout(self.detect_timeout, tcp.peek(&mut first))
                .await
                .ok(),
            // A client that never speaks is not holding a connection open
            // for long either.
            MtlsMode::Strict => Some(
                tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first))
                    .await
                    .unwrap_or_else(|_| {
                        Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client sent nothing",
                        ))
                    }),
            ),
        };
        let (is_tls, spoke) = match peeked {
            Some(Ok(1)) => (first[0] == TLS_HANDSHAKE, true),
            Some(Ok(_)) => (false, false), // EOF before a byte
            Some(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                return Err((TlsFailure::Timeout, e));
            }
            Some(Err(e)) => return Err((TlsFailure::Other, e)),
            None => (false, false),
        };
        if !is_tls {
            return match mode {
                MtlsMode::Permissive => Ok(Accepted::Plain(tcp, spoke)),
                MtlsMode::Strict => Err((
                    TlsFailure::PlaintextRefused,
                    io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "plaintext refused: this workload's mTLS mode is strict",
                    ),
                )),
            };
        }
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err((TlsFailure::of(&e), e)),
            Err(_) => {
                return Err((
                    TlsFailure::Timeout,
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"),
                ));
            }
        };
        let client = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| SpiffeId::from_svid(c).ok());
        match client {
            Some(id) => Ok(Accepted::Tls(Box::new(tls), id)),
            // The verifier already demands one; this is belt and braces.
            None => Err((
                TlsFailure::ForeignIdentity,
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "client certificate has no SPIFFE ID",
                ),
            )),
        }
    }
}
