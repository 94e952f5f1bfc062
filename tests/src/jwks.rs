//! A test identity provider's key-set endpoint: HTTPS on loopback inside a
//! pod's namespace, with a CA of its own (handed to the control plane with
//! `--jwks-ca-file`), serving whatever key set the test sets, and counting
//! the fetches.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::node::Pod;

#[derive(Debug)]
pub struct JwksServer {
    /// `https://<pod ip>:<port>/jwks.json`.
    pub url: String,
    /// The CA that signed the server's certificate (PEM file).
    pub ca_file: PathBuf,
    jwks: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    /// Starts it on `pod`'s address and `port`, serving `jwks`; the CA goes
    /// to `dir`.
    pub fn start(pod: &Pod, port: u16, dir: &Path, jwks: &str) -> JwksServer {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test IdP CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("server key");
        let addr = pod.addr(port);
        let params =
            rcgen::CertificateParams::new(vec![addr.ip().to_string()]).expect("server params");
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        let ca_file = dir.join("jwks-ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("CA file");
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server TLS");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let jwks = Arc::new(Mutex::new(jwks.to_string()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (j, f) = (jwks.clone(), fetches.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        pod.ns
            .thread("jwks-server", move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
                    ready_tx.send(()).expect("ready");
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        let (acceptor, j, f) = (acceptor.clone(), j.clone(), f.clone());
                        tokio::spawn(async move {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let svc = service_fn(move |_req| {
                                f.fetch_add(1, Ordering::SeqCst);
                                let body = j.lock().expect("jwks").clone();
                                async move {
                                    Ok::<_, std::convert::Infallible>(
                                        hyper::Response::builder()
                                            .header("content-type", "application/json")
                                            .body(Full::new(Bytes::from(body)))
                                            .expect("response"),
                                    )
                                }
                            });
                            let _ =
                                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(tls), svc)
                                    .await;
                        });
                    }
                });
            })
            .expect("jwks server thread");
        ready_rx.recv().expect("jwks server ready");
        JwksServer {
            url: format!("https://{addr}/jwks.json"),
            ca_file,
            jwks,
            fetches,
        }
    }

    /// What the next fetch gets.
    pub fn set(&self, jwks: &str) {
        *self.jwks.lock().expect("jwks") = jwks.to_string();
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}
