//! The names a member requires of a peer's certificate
//! (`--peer-cert-allowed-cn`, `--peer-cert-allowed-hostname`) or of a client's
//! (`--client-cert-allowed-hostname`), as a pure check and as verifiers that
//! apply it inside the TLS handshake: of the peers or clients that connect to
//! it (`NamedPeers`) and of the peers it dials (`NamedServers`), as etcd
//! applies the peer rule both ways.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Whose certificate a rule is for (the flags' prefix in refusals).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CertSide {
    /// `--peer-cert-allowed-*`.
    #[default]
    Peer,
    /// `--client-cert-allowed-*`.
    Client,
}

impl CertSide {
    fn name(self) -> &'static str {
        match self {
            CertSide::Peer => "peer",
            CertSide::Client => "client",
        }
    }
}

/// Names a peer's (or client's) certificate must carry (either rule, when
/// given).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedPeer {
    /// `--peer-cert-allowed-cn`: the subject's common name.
    pub cn: Option<String>,
    /// `--peer-cert-allowed-hostname` (`--client-cert-allowed-hostname`): a
    /// DNS name or IP address among the certificate's subject alternative
    /// names.
    pub hostname: Option<String>,
    /// Whose certificate this checks.
    pub side: CertSide,
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
            .map_err(|error| format!("unreadable {} certificate: {error}", self.side.name()))?;
        if let Some(allowed) = &self.cn {
            let names: Vec<&str> = cert
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .collect();
            if !names.contains(&allowed.as_str()) {
                let side = self.side.name();
                return Err(format!(
                    "{side} certificate common name {names:?} is not the allowed {allowed:?} (--{side}-cert-allowed-cn)"
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
                let side = self.side.name();
                return Err(format!(
                    "{side} certificate names {names:?} do not include the allowed {allowed:?} (--{side}-cert-allowed-hostname)"
                ));
            }
        }
        Ok(())
    }
}

/// The client-certificate verifier of every TLS listener: webpki's, with Go's
/// trusted-anchor exception (`anchor_clients`), then `AllowedPeer` when
/// given: a peer or client whose certificate is good but misnamed is refused
/// inside the handshake, with a `bad_certificate` alert (as etcd), and the
/// reason reaches the log line of the refusing side.
#[derive(Debug)]
pub(crate) struct NamedPeers {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) allowed: AllowedPeer,
    /// The DER of every trusted CA certificate.
    pub(crate) anchors: Vec<Vec<u8>>,
}

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
        let seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let verified = if intermediates.is_empty()
            && crate::anchor_clients::is_trusted_anchor(end_entity, &self.anchors, seconds)
        {
            ClientCertVerified::assertion()
        } else {
            self.inner
                .verify_client_cert(end_entity, intermediates, now)?
        };
        if !self.allowed.any() {
            return Ok(verified);
        }
        self.allowed.check(end_entity).map_err(|reason| {
            // The reason is logged here; the peer gets etcd's alert,
            // bad_certificate (Go prints "remote error: tls: bad certificate").
            // etcd's words for the refusal, which its e2e tests look for.
            tracing::warn!(%reason, side = self.allowed.side.name(), "refused a certificate: client certificate authentication failed");
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
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
            side: CertSide::Peer,
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

/// The dialing side of the rule: the peer a member dials must present a
/// certificate with the allowed name, after the usual chain and host checks.
#[derive(Debug)]
pub(crate) struct NamedServers {
    pub(crate) inner: Arc<dyn ServerCertVerifier>,
    pub(crate) allowed: AllowedPeer,
}

impl ServerCertVerifier for NamedServers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.allowed.check(end_entity).map_err(|reason| {
            tracing::warn!(%reason, "refused a dialed peer's certificate: client certificate authentication failed");
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
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
