//! TLS on both sides, with rustls (no OpenSSL to install).
//!
//! Client side: the guard answers SSLRequest with `S` when it has a
//! certificate and terminates TLS (`[tls] client_mode`: disable, allow,
//! require). Upstream side: `[proxy] upstream_tls` with libpq's `sslmode`
//! meanings (disable, prefer, require, verify-ca, verify-full), SNI and host
//! name checks as libpq makes them. Certificates are read again on SIGHUP
//! and RELOAD; a session keeps the configuration it started with.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

use crate::net::{Endpoint, Stream};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Config(String),
}

/// The ALPN protocol name PostgreSQL 17 uses, required for direct TLS
/// (`sslnegotiation=direct`).
pub const ALPN: &[u8] = b"postgresql";

/// The first byte of a TLS handshake record: a client that starts TLS at
/// once instead of sending SSLRequest (PostgreSQL 17's direct negotiation).
pub const TLS_HANDSHAKE: u8 = 0x16;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How clients may connect (`[tls] client_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMode {
    /// SSLRequest answered `N`.
    Disable,
    /// TLS for clients that ask; plain text for the others.
    Allow,
    /// Plain-text clients get a FATAL (a CancelRequest is still taken, as
    /// PostgreSQL takes it).
    Require,
}

impl ClientMode {
    /// `""` means: allow when a certificate is configured, else disable.
    pub fn parse(s: &str, has_cert: bool) -> Result<ClientMode, TlsError> {
        match s.to_ascii_lowercase().as_str() {
            "" if has_cert => Ok(ClientMode::Allow),
            "" | "disable" => Ok(ClientMode::Disable),
            "allow" | "prefer" => Ok(ClientMode::Allow),
            "require" => Ok(ClientMode::Require),
            other => Err(TlsError::Config(format!(
                "client TLS mode {other:?}: expected disable, allow or require"
            ))),
        }
    }
}

/// The client side: the certificate in force and the mode.
pub struct ClientTls {
    pub mode: ClientMode,
    cert_file: PathBuf,
    key_file: PathBuf,
    acceptor: ArcSwapOption<tokio_rustls::TlsAcceptor>,
}

impl ClientTls {
    pub fn new(settings: &crate::policy::TlsSettings) -> Result<ClientTls, TlsError> {
        let has_cert = !settings.cert_file.is_empty();
        let mode = ClientMode::parse(&settings.client_mode, has_cert)?;
        if mode != ClientMode::Disable && !has_cert {
            return Err(TlsError::Config(
                "client TLS needs a certificate: set [tls] cert_file and key_file (or --tls-cert and --tls-key)".into(),
            ));
        }
        if has_cert == settings.key_file.is_empty() {
            return Err(TlsError::Config(
                "[tls] cert_file and key_file go together".into(),
            ));
        }
        let tls = ClientTls {
            mode,
            cert_file: PathBuf::from(&settings.cert_file),
            key_file: PathBuf::from(&settings.key_file),
            acceptor: ArcSwapOption::empty(),
        };
        if mode != ClientMode::Disable {
            tls.reload()?;
        }
        Ok(tls)
    }

    /// Reads the certificate and key again; on error the ones in force stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        if self.mode == ClientMode::Disable {
            return Ok(());
        }
        let certs = read_certs(&self.cert_file)?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file).map_err(|e| TlsError::File {
            path: self.key_file.display().to_string(),
            message: format!("no usable private key: {e}"),
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::File {
                path: self.cert_file.display().to_string(),
                message: format!("certificate and key do not go together: {e}"),
            })?;
        // PostgreSQL 17's protocol name: a client that offers ALPN must
        // offer it (one that offers none is served after an SSLRequest).
        config.alpn_protocols = vec![ALPN.to_vec()];
        self.acceptor
            .store(Some(Arc::new(tokio_rustls::TlsAcceptor::from(Arc::new(
                config,
            )))));
        Ok(())
    }

    /// The acceptor for a client that sent SSLRequest, if TLS is on.
    pub fn acceptor(&self) -> Option<Arc<tokio_rustls::TlsAcceptor>> {
        if self.mode == ClientMode::Disable {
            return None;
        }
        self.acceptor.load_full()
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::File {
        path: path.display().to_string(),
        message,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("bad certificate: {e}")))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// How the guard talks to the upstream server: libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamMode {
    Disable,
    /// TLS if the server offers it (libpq's default, and PgBouncer's).
    Prefer,
    /// TLS or no connection; the certificate is not checked (unless a CA
    /// file is given: then as verify-ca, as libpq does with a root cert).
    Require,
    /// The certificate must chain to the CA.
    VerifyCa,
    /// ... and name the host.
    VerifyFull,
}

impl UpstreamMode {
    pub fn parse(s: &str) -> Result<UpstreamMode, TlsError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "disable" | "allow" => UpstreamMode::Disable,
            "" | "prefer" => UpstreamMode::Prefer,
            "require" => UpstreamMode::Require,
            "verify-ca" => UpstreamMode::VerifyCa,
            "verify-full" => UpstreamMode::VerifyFull,
            other => {
                return Err(TlsError::Config(format!(
                    "upstream TLS mode {other:?}: expected disable, prefer, require, verify-ca or verify-full"
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamMode::Disable => "disable",
            UpstreamMode::Prefer => "prefer",
            UpstreamMode::Require => "require",
            UpstreamMode::VerifyCa => "verify-ca",
            UpstreamMode::VerifyFull => "verify-full",
        }
    }
}

/// The upstream side: mode, and the connector with its checks.
pub struct UpstreamTls {
    pub mode: UpstreamMode,
    connector: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl UpstreamTls {
    /// No TLS to the upstream (tests, and tools that connect elsewhere).
    pub fn disabled() -> UpstreamTls {
        UpstreamTls {
            mode: UpstreamMode::Disable,
            connector: None,
        }
    }

    pub fn new(mode: &str, ca_file: &str, upstream: &Endpoint) -> Result<UpstreamTls, TlsError> {
        let mut mode = UpstreamMode::parse(mode)?;
        let host = match upstream {
            // libpq never uses TLS over a Unix-domain socket.
            Endpoint::Unix(_) if matches!(mode, UpstreamMode::Disable | UpstreamMode::Prefer) => {
                return Ok(UpstreamTls::disabled())
            }
            Endpoint::Unix(_) => {
                return Err(TlsError::Config(format!(
                "upstream_tls = {} needs a TCP upstream: TLS is not used over a Unix-domain socket",
                mode.as_str()
            )))
            }
            Endpoint::Tcp(addr) => addr
                .rsplit_once(':')
                .map_or(addr.as_str(), |(h, _)| h)
                .trim_matches(['[', ']'])
                .to_string(),
        };
        if mode == UpstreamMode::Disable {
            return Ok(UpstreamTls::disabled());
        }
        let ca = if !ca_file.is_empty() {
            Some(PathBuf::from(ca_file))
        } else if matches!(mode, UpstreamMode::VerifyCa | UpstreamMode::VerifyFull) {
            // libpq's default root certificate file.
            let default = std::env::var_os("HOME")
                .map(|h| Path::new(&h).join(".postgresql/root.crt"))
                .filter(|p| p.exists());
            Some(default.ok_or_else(|| {
                TlsError::Config(format!(
                    "upstream_tls = {} needs the CA's certificate: set [proxy] upstream_ca_file (or --upstream-ca)",
                    mode.as_str()
                ))
            })?)
        } else {
            None
        };
        if ca.is_some() && mode == UpstreamMode::Require {
            mode = UpstreamMode::VerifyCa;
        }
        let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match &ca {
            None => Arc::new(Lenient {
                provider: provider(),
                chain: None,
            }),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in read_certs(path)? {
                    roots.add(c).map_err(|e| TlsError::File {
                        path: path.display().to_string(),
                        message: format!("bad CA certificate: {e}"),
                    })?;
                }
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
                if mode == UpstreamMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(Lenient {
                        provider: provider(),
                        chain: Some(webpki),
                    })
                }
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // An IP address is checked against the certificate's IP names and
        // sent no SNI; a host name is both, as libpq does (sslsni=1).
        let name = ServerName::try_from(host.clone())
            .map_err(|e| TlsError::Config(format!("upstream host {host:?}: {e}")))?;
        Ok(UpstreamTls {
            mode,
            connector: Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name)),
        })
    }

    /// Asks a freshly connected upstream for TLS (SSLRequest) and, where it
    /// agrees, wraps the connection; where it refuses, goes on in plain text
    /// only under `prefer`.
    pub async fn negotiate(&self, mut stream: Stream) -> io::Result<Stream> {
        let Some((connector, name)) = &self.connector else {
            return Ok(stream);
        };
        let mut req = Vec::with_capacity(8);
        req.extend_from_slice(&8i32.to_be_bytes());
        req.extend_from_slice(&crate::protocol::SSL_REQUEST.to_be_bytes());
        stream.write_all(&req).await?;
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await?;
        match answer[0] {
            b'S' => {
                let tls = connector.connect(name.clone(), stream).await.map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("TLS with the database server failed: {e}"),
                    )
                })?;
                Ok(Stream::TlsClient(Box::new(tls)))
            }
            b'N' if self.mode == UpstreamMode::Prefer => Ok(stream),
            b'N' => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "the database server does not support TLS, and upstream_tls = {}",
                    self.mode.as_str()
                ),
            )),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected answer {other:#04x} to SSLRequest from the database server"),
            )),
        }
    }
}

/// The checks of `prefer`/`require` without a CA (`chain` None: encrypted,
/// not authenticated, as libpq) and of `verify-ca` (the chain must lead to
/// the CA; the name is not checked). Handshake signatures are verified
/// either way. (`verify-full` uses rustls' WebPkiServerVerifier as it is.)
#[derive(Debug)]
struct Lenient {
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
}

impl rustls::client::danger::ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        let Some(chain) = &self.chain else {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An AuthenticationSASL body (`R`, code 10) without SCRAM-SHA-256-PLUS, or
/// None if it does not offer it. Channel binding cannot survive a proxy that
/// terminates TLS: the client would bind to the guard's certificate, the
/// server checks its own, and the login fails; so the client is never
/// offered it (as PgBouncer does).
pub fn strip_channel_binding(body: &[u8]) -> Option<Vec<u8>> {
    if body.len() < 4 || body[..4] != 10i32.to_be_bytes() {
        return None;
    }
    let mechanisms: Vec<&[u8]> = body[4..]
        .split(|b| *b == 0)
        .filter(|m| !m.is_empty())
        .collect();
    if !mechanisms.contains(&&b"SCRAM-SHA-256-PLUS"[..]) {
        return None;
    }
    let mut extra = Vec::new();
    for m in mechanisms.iter().filter(|m| **m != b"SCRAM-SHA-256-PLUS") {
        extra.extend_from_slice(m);
        extra.push(0);
    }
    extra.push(0);
    Some(crate::protocol::authentication(10, &extra).to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_binding_is_never_offered() {
        let mut body = 10i32.to_be_bytes().to_vec();
        body.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let out = strip_channel_binding(&body).unwrap();
        let mut want = vec![b'R'];
        want.extend_from_slice(&23i32.to_be_bytes());
        want.extend_from_slice(&10i32.to_be_bytes());
        want.extend_from_slice(b"SCRAM-SHA-256\0\0");
        assert_eq!(out, want);
        let mut plain = 10i32.to_be_bytes().to_vec();
        plain.extend_from_slice(b"SCRAM-SHA-256\0\0");
        assert_eq!(strip_channel_binding(&plain), None);
        assert_eq!(strip_channel_binding(&0i32.to_be_bytes()), None);
    }

    #[test]
    fn modes_read_as_libpq_reads_them() {
        assert_eq!(ClientMode::parse("", true).unwrap(), ClientMode::Allow);
        assert_eq!(ClientMode::parse("", false).unwrap(), ClientMode::Disable);
        assert!(ClientMode::parse("sometimes", true).is_err());
        assert_eq!(UpstreamMode::parse("").unwrap(), UpstreamMode::Prefer);
        assert_eq!(
            UpstreamMode::parse("verify-full").unwrap(),
            UpstreamMode::VerifyFull
        );
        let unix = Endpoint::parse("/tmp").unwrap();
        assert_eq!(
            UpstreamTls::new("prefer", "", &unix).unwrap().mode,
            UpstreamMode::Disable
        );
        assert!(UpstreamTls::new("require", "", &unix).is_err());
    }
}
