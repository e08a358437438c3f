//! TLS between members (etcd's `--peer-*` flags): the dialing side (the
//! serving side is `tls`, with the name rules of `peer_names`).
//!
//! A member dials `https://` peer URLs over TLS, presenting its own peer
//! certificate (as etcd does: one certificate for both directions) and
//! checking the peer's against `--peer-trusted-ca-file` and the URL's host.
//! With `--peer-auto-tls` and no trusted CA, peers' certificates are not
//! checked, as in etcd; the member warns at start. The files are looked at on
//! every new connection, as on the serving side.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use mainstay_raft::{Dial, peer_endpoint, tcp_dial};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::peer_names::{AllowedPeer, NamedServers};
use crate::tls::{Reloading, TlsFiles, TlsOptions, alert_bad_certificate, read_certs, versions};

/// How long a peer connection may take to connect and finish its handshake.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// A rustls client configuration for dialing peers.
fn client_config(
    files: &TlsFiles,
    options: &TlsOptions,
    allowed: &AllowedPeer,
) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(crate::tls::provider(options));
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(options))
        .context("TLS versions")?;
    let builder = match &files.trusted_ca_file {
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca_file, "the peer trusted CA (--peer-trusted-ca-file)")? {
                roots.add(cert).with_context(|| {
                    format!("{}: not a usable CA certificate", ca_file.display())
                })?;
            }
            if allowed.any() {
                let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .context("the peer trusted CA (--peer-trusted-ca-file)")?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NamedServers {
                        inner,
                        allowed: allowed.clone(),
                    }))
            } else {
                builder.with_root_certificates(roots)
            }
        }
        None if files.auto_tls => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider))),
        None => bail!("dialing peers over TLS needs --peer-trusted-ca-file (or --peer-auto-tls)"),
    };
    let mut config = match (&files.cert_file, &files.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let chain = read_certs(cert_file, "the peer certificate (--peer-cert-file)")?;
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|error| anyhow::anyhow!("{}: {error}", key_file.display()))
                .context("read the peer private key (--peer-key-file)")?;
            builder
                .with_client_auth_cert(chain, key)
                .context("the peer certificate and key do not make a usable pair")?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// `--peer-auto-tls` without a trusted CA: any server certificate is taken,
/// as etcd does (its self-signed peer certificates cannot be checked).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Logs, in etcd's (Go's) words that operators and etcd's tests look for, a
/// peer's refusal of this member's certificate. With TLS 1.3 the peer checks
/// the client certificate after the client's side of the handshake is done,
/// so the alert arrives on the first read (`AlertWatch`).
fn note_refusal(error: &std::io::Error, peer: &str) {
    /// At most one line per peer in this long (dials are retried quickly).
    const QUIET_FOR: Duration = Duration::from_secs(10);
    static LOGGED: Mutex<BTreeMap<String, tokio::time::Instant>> = Mutex::new(BTreeMap::new());
    if !alert_bad_certificate(error) {
        return;
    }
    let now = tokio::time::Instant::now();
    let mut logged = LOGGED.lock().unwrap_or_else(|p| p.into_inner());
    if logged
        .get(peer)
        .is_some_and(|last| now.duration_since(*last) < QUIET_FOR)
    {
        return;
    }
    logged.insert(peer.to_string(), now);
    tracing::warn!(
        %peer,
        "a peer refused this member's certificate: remote error: tls: bad certificate"
    );
}

/// A dialed peer stream that reports a refusal alert when a read meets it.
struct AlertWatch<S> {
    inner: S,
    peer: String,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for AlertWatch<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Err(error)) = &polled {
            note_refusal(error, &this.peer);
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for AlertWatch<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Dials `https://` peer URLs over TLS and the rest as `tcp_dial` does.
/// `files` has its certificate resolved (`--peer-auto-tls` made already).
/// `allowed`: the names dialed peers must carry (etcd checks them both ways).
pub fn peer_dial(
    files: &TlsFiles,
    options: &TlsOptions,
    allowed: &AllowedPeer,
) -> anyhow::Result<Dial> {
    let allowed = allowed.clone();
    let tls = Arc::new(Reloading::new(files, "peer dialing", |files| {
        client_config(files, options, &allowed)
    })?);
    let options = options.clone();
    let plain = tcp_dial();
    Ok(Arc::new(move |url: &str| {
        let Some(rest) = url.strip_prefix("https://") else {
            return plain(url);
        };
        let authority = rest.split('/').next().unwrap_or(rest).to_string();
        let host = match authority.rsplit_once(':') {
            Some((host, _)) => host,
            None => authority.as_str(),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let name =
            ServerName::try_from(host).map_err(|error| format!("bad peer URL {url}: {error}"))?;
        // TLS is the connector's: tonic must see a plain URI (it refuses
        // https:// without its own TLS).
        let endpoint = peer_endpoint(url, format!("http://{authority}"))?;
        let (tls, options, allowed) = (tls.clone(), options.clone(), allowed.clone());
        Ok(
            endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let config = tls.get(|files| client_config(files, &options, &allowed));
                let (authority, name) = (authority.clone(), name.clone());
                async move {
                    let connect = async {
                        let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
                        let _ = tcp.set_nodelay(true);
                        let tls = tokio_rustls::TlsConnector::from(config)
                            .connect(name, tcp)
                            .await;
                        if let Err(error) = &tls {
                            note_refusal(error, &authority);
                        }
                        tls.map(|stream| AlertWatch {
                            inner: stream,
                            peer: authority.clone(),
                        })
                    };
                    let stream =
                        tokio::time::timeout(DIAL_TIMEOUT, connect)
                            .await
                            .map_err(|_| {
                                std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    format!("peer {authority}: TLS connection timed out"),
                                )
                            })??;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            })),
        )
    }))
}
