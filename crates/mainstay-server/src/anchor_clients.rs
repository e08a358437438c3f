//! A client certificate that *is* one of the trusted CA certificates
//! (`--trusted-ca-file`), presented as its own end entity: Go's TLS stack
//! accepts it (etcd's e2e suite uses a self-signed CA certificate with CN
//! `root` as server, CA and client certificate at once); webpki refuses a CA
//! certificate as an end entity. `AnchorClients` accepts exactly that case,
//! byte for byte equal to a trusted certificate and inside its validity
//! period, and hands everything else to the ordinary verifier. The holder of
//! that CA's key can issue any client certificate anyway, so this grants no
//! one more than they already have. The handshake still proves that the
//! client holds the certificate's private key.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Whether `end_entity` is byte for byte one of `anchors` and valid at
/// `now` (seconds since the epoch).
pub fn is_trusted_anchor(end_entity: &[u8], anchors: &[Vec<u8>], now: i64) -> bool {
    if !anchors.iter().any(|anchor| anchor.as_slice() == end_entity) {
        return false;
    }
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(end_entity) else {
        return false;
    };
    let validity = cert.validity();
    validity.not_before.timestamp() <= now && now <= validity.not_after.timestamp()
}

/// The client verifier with the trusted-anchor exception (see the module docs).
#[derive(Debug)]
pub(crate) struct AnchorClients {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    /// The DER of every certificate in `--trusted-ca-file`.
    pub(crate) anchors: Vec<Vec<u8>>,
}

impl ClientCertVerifier for AnchorClients {
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
        if intermediates.is_empty() && is_trusted_anchor(end_entity, &self.anchors, seconds) {
            return Ok(ClientCertVerified::assertion());
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(days_valid: i64) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(2);
        params.not_after = now + time::Duration::days(days_valid);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn only_a_valid_certificate_equal_to_an_anchor_passes() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let anchor = certificate(30);
        let expired = certificate(-1);
        let other = certificate(30);
        let anchors = vec![anchor.clone(), expired.clone()];
        let table: [(&[u8], bool, &str); 4] = [
            (&anchor, true, "the anchor itself"),
            (&expired, false, "an expired anchor"),
            (&other, false, "a certificate that is not an anchor"),
            (b"garbage", false, "bytes that are no certificate"),
        ];
        for (end_entity, want, case) in table {
            assert_eq!(is_trusted_anchor(end_entity, &anchors, now), want, "{case}");
        }
        assert!(!is_trusted_anchor(&anchor, &[], now), "no anchors");
    }
}
