//! TLS between members (etcd's `--peer-*` flags): the dialing side, and the
//! name rules a serving member applies, inside the handshake, to the
//! certificate a peer presents (`--peer-cert-allowed-cn`,
//! `--peer-cert-allowed-hostname`).
//!
//! A member dials `https://` peer URLs over TLS, presenting its own peer
//! certificate (as etcd does: one certificate for both directions) and
//! checking the peer's against `--peer-trusted-ca-file` and the URL's host.
//! With `--peer-auto-tls` and no trusted CA, peers' certificates are not
//! checked, as in etcd; the member warns at start. The files are looked at on
//! every new connection, as on the serving side.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use mainstay_raft::{Dial, peer_endpoint, tcp_dial};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, SignatureScheme,
};

use crate::tls::{Stamp, TlsFiles, TlsOptions, read_certs, stamp, versions};

/// How long a peer connection may take to connect and finish its handshake.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Names a peer's certificate must carry (either rule, when given).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedPeer {
    /// `--peer-cert-allowed-cn`: the subject's common name.
    pub cn: Option<String>,
    /// `--peer-cert-allowed-hostname`: a DNS name or IP address among the
    /// certificate's subject alternative names.
    pub hostname: Option<String>,
}

impl AllowedPeer {
    /// Whether any rule is set.
    pub fn any(&self) -> bool {
        self.cn.is_some() || self.hostname.is_some()
    }

    /// Checks a peer's leaf certificate (DER); the reason if refused.
    pub fn check(&self, leaf: &[u8]) -> Result<(), String> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(leaf)
            .map_err(|error| format!("unreadable peer certificate: {error}"))?;
        if let Some(allowed) = &self.cn {
            let names: Vec<&str> = cert
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .collect();
            if !names.contains(&allowed.as_str()) {
                return Err(format!(
                    "peer certificate common name {names:?} is not the allowed {allowed:?} (--peer-cert-allowed-cn)"
                ));
            }
        }
        if let Some(allowed) = &self.hostname {
            let mut names = Vec::new();
            if let Ok(Some(san)) = cert.subject_alternative_name() {
                for name in &san.value.general_names {
                    match name {
                        GeneralName::DNSName(dns) => names.push(dns.to_string()),
                        GeneralName::IPAddress(bytes) => {
                            let ip = match bytes.len() {
                                4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                                16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                                _ => None,
                            };
                            if let Some(ip) = ip {
                                names.push(ip.to_string());
                            }
                        }
                        _ => {}
                    }
                }
            }
            if !names.iter().any(|name| host_matches(name, allowed)) {
                return Err(format!(
                    "peer certificate names {names:?} do not include the allowed {allowed:?} (--peer-cert-allowed-hostname)"
                ));
            }
        }
        Ok(())
    }
}

/// A client-certificate verifier that also applies `AllowedPeer`: a peer
/// whose certificate is good but misnamed is refused inside the handshake,
/// with a `bad_certificate` alert (as etcd), and the reason reaches the log
/// line of the refusing side.
#[derive(Debug)]
pub(crate) struct NamedPeers {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) allowed: AllowedPeer,
}

/// The reason a peer's certificate names were refused.
#[derive(Debug)]
struct NotAllowed(String);

impl std::fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotAllowed {}

impl ClientCertVerifier for NamedPeers {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.allowed.check(end_entity).map_err(|reason| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                NotAllowed(reason),
            ))))
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Whether a certificate name (`*.example.com` allowed as the leftmost
/// label) matches `host`, as TLS host name checks do.
fn host_matches(name: &str, host: &str) -> bool {
    let (name, host) = (name.to_ascii_lowercase(), host.to_ascii_lowercase());
    if let Ok(ip) = host.parse::<IpAddr>() {
        return name.parse::<IpAddr>().is_ok_and(|name| name == ip);
    }
    match name.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => name == host,
    }
}

/// The dialing side's TLS configuration, rebuilt when its files change.
struct DialTls {
    files: TlsFiles,
    options: TlsOptions,
    current: Mutex<(Stamp, Arc<ClientConfig>)>,
}

impl DialTls {
    fn config(&self) -> Arc<ClientConfig> {
        let now = stamp(&self.files);
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.0 != now {
            match client_config(&self.files, &self.options) {
                Ok(config) => *current = (now, Arc::new(config)),
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "peer TLS files changed but cannot be used; dialing with the previous ones"
                    );
                    current.0 = now;
                }
            }
        }
        current.1.clone()
    }
}

/// A rustls client configuration for dialing peers.
fn client_config(files: &TlsFiles, options: &TlsOptions) -> anyhow::Result<ClientConfig> {
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
            builder.with_root_certificates(roots)
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

/// Dials `https://` peer URLs over TLS and the rest as `tcp_dial` does.
/// `files` has its certificate resolved (`--peer-auto-tls` made already).
pub fn peer_dial(files: &TlsFiles, options: &TlsOptions) -> anyhow::Result<Dial> {
    let config = client_config(files, options).context("peer TLS")?;
    let tls = Arc::new(DialTls {
        files: files.clone(),
        options: options.clone(),
        current: Mutex::new((stamp(files), Arc::new(config))),
    });
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
        let tls = tls.clone();
        Ok(
            endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let (authority, name, config) = (authority.clone(), name.clone(), tls.config());
                async move {
                    let connect = async {
                        let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
                        let _ = tcp.set_nodelay(true);
                        tokio_rustls::TlsConnector::from(config)
                            .connect(name, tcp)
                            .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_as_tls_matches_them() {
        for (name, host, matches) in [
            ("n1.example.com", "n1.example.com", true),
            ("N1.Example.com", "n1.example.COM", true),
            ("*.example.com", "n1.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "a.n1.example.com", false),
            ("n1.example.com", "n2.example.com", false),
            ("10.0.0.1", "10.0.0.1", true),
            ("10.0.0.1", "10.0.0.2", false),
            ("::1", "0:0:0:0:0:0:0:1", true),
            ("*.example.com", "10.0.0.1", false),
        ] {
            assert_eq!(host_matches(name, host), matches, "{name} vs {host}");
        }
    }

    #[test]
    fn allowed_names_on_a_peer_certificate() {
        let mut params = rcgen::CertificateParams::new(vec![
            "n1.example.com".to_string(),
            "10.0.0.1".to_string(),
        ])
        .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "n1");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let der = cert.der().to_vec();
        let rule = |cn: Option<&str>, hostname: Option<&str>| AllowedPeer {
            cn: cn.map(String::from),
            hostname: hostname.map(String::from),
        };
        for (allowed, ok) in [
            (rule(None, None), true),
            (rule(Some("n1"), None), true),
            (rule(Some("n2"), None), false),
            (rule(None, Some("n1.example.com")), true),
            (rule(None, Some("10.0.0.1")), true),
            (rule(None, Some("n2.example.com")), false),
            (rule(Some("n1"), Some("10.0.0.1")), true),
            (rule(Some("n1"), Some("10.0.0.2")), false),
        ] {
            assert_eq!(allowed.check(&der).is_ok(), ok, "{allowed:?}");
        }
        assert!(rule(Some("n1"), None).check(b"garbage").is_err());
    }
}
