//! What went wrong on the way to a server, said in words an admin can act on (for the agent's
//! errors and reports, and for the admin commands of `semithin`): a URL that is not
//! one, plain HTTP to an HTTPS port or the other way round, a certificate this client does not
//! trust (or a CA certificate used as the server's own), nothing listening, no answer in time.
//! The HTTP and TLS libraries' own words ("relative URL without a base", "InvalidContentType",
//! "CaUsedAsEndEntity") are kept only as the last resort, when nothing here fits.

use std::error::Error as StdError;

use reqwest::Url;

/// A server URL as the admin and agent commands take it: `http://` or `https://`, a host, an
/// optional port and path.
pub fn check_url(s: &str) -> Result<Url, String> {
    let example = "write it as http://HOST:PORT or https://HOST:PORT \
                   (e.g. https://updates.example:8470)";
    let url = Url::parse(s).map_err(|e| {
        let why = match e {
            url::ParseError::RelativeUrlWithoutBase => {
                "it has no scheme (http:// or https://)".to_owned()
            }
            url::ParseError::InvalidPort => "its port is not a number from 1 to 65535".into(),
            url::ParseError::EmptyHost => "it has no host".into(),
            url::ParseError::InvalidIpv4Address | url::ParseError::InvalidIpv6Address => {
                "its IP address is not valid".into()
            }
            other => other.to_string(),
        };
        format!("bad server URL {s:?}: {why}; {example}")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "bad server URL {s:?}: the scheme must be http:// or https://, not {}://; {example}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("bad server URL {s:?}: it has no host; {example}"));
    }
    Ok(url)
}

/// Every cause of an error, the inner error of an `io::Error` included (its `source` skips it).
fn causes<'a>(e: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(e);
    while let Some(c) = next {
        out.push(c);
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            // An io::Error may wrap another one (hyper wraps the TLS stream's).
            next = Some(inner);
            continue;
        }
        next = c.source();
    }
    out
}

/// A sentence for an error of a request to `base`: what is wrong and what to do. `None` when
/// the error is not about reaching the server (then the caller says what it has).
pub fn explain(base: &str, e: &(dyn StdError + 'static)) -> Option<String> {
    let all = causes(e);
    let host = Url::parse(base)
        .ok()
        .and_then(|u| {
            let port = u.port_or_known_default()?;
            Some(format!("{}:{port}", u.host_str()?))
        })
        .unwrap_or_else(|| base.to_owned());
    let https = base.starts_with("https://");
    for c in &all {
        if let Some(t) = c.downcast_ref::<rustls::Error>() {
            return Some(tls(base, &host, t));
        }
    }
    for c in &all {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::ConnectionRefused => {
                    return Some(format!(
                        "nothing answers at {host} (connection refused): is the server running \
                         (`semithin serve`), and are the host and port in {base} right?"
                    ));
                }
                K::TimedOut => return Some(timeout(base)),
                K::HostUnreachable | K::NetworkUnreachable => {
                    return Some(format!(
                        "{host} cannot be reached from here ({io}): check the address and the \
                         network"
                    ));
                }
                _ => {}
            }
        }
    }
    let text: Vec<String> = all.iter().map(|c| c.to_string()).collect();
    let text = text.join(": ");
    if let Some(r) = e.downcast_ref::<reqwest::Error>() {
        if r.is_timeout() {
            return Some(timeout(base));
        }
        if r.is_builder() {
            return Some(match check_url(base) {
                Err(why) => why,
                Ok(_) => format!("cannot make a request to {base}: {text}"),
            });
        }
    }
    if text.contains("dns error") || text.contains("failed to lookup address") {
        return Some(format!(
            "the host of {base} is not known here (DNS): check its spelling"
        ));
    }
    // An HTTP client reading a TLS alert, or a server closing on a request it cannot read.
    if !https
        && (text.contains("invalid HTTP version")
            || text.contains("connection closed before message completed")
            || text.contains("invalid HTTP status")
            || text.contains("connection reset"))
    {
        return Some(format!(
            "the server at {host} does not answer plain HTTP: it probably speaks HTTPS, so use \
             https://{} (with --ca FILE when its certificate comes from a CA of your own)",
            base.trim_start_matches("http://")
        ));
    }
    if let Some(r) = e.downcast_ref::<reqwest::Error>()
        && (r.is_connect() || r.is_request())
    {
        return Some(format!("cannot reach the server at {base}: {text}"));
    }
    None
}

fn timeout(base: &str) -> String {
    format!(
        "the server at {base} did not answer in time: is the address right, and does a firewall \
         let the connection through?"
    )
}

fn tls(base: &str, host: &str, e: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error as E};
    match e {
        E::InvalidMessage(_) => format!(
            "the server at {host} does not speak HTTPS: it probably speaks plain HTTP, so use \
             http://{} (or give `semithin serve` --tls-cert and --tls-key)",
            base.trim_start_matches("https://")
        ),
        E::InvalidCertificate(c) => {
            let what = match c {
                CertificateError::UnknownIssuer => "is signed by a CA this client does not trust: \
                     pass --ca FILE (or `ca` in the config) with the certificate of the CA that \
                     signed the server's certificate"
                    .to_owned(),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "has expired: renew it on the server".into()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "is not valid yet: check the clocks of this machine and the server".into()
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => format!(
                    "is not made out for {host}: use the name the certificate names, or give \
                     the server a certificate for this name (subjectAltName)"
                ),
                CertificateError::Revoked => "has been revoked".into(),
                CertificateError::Other(o) if o.to_string().contains("CaUsedAsEndEntity") => {
                    "is a CA certificate: the server must present a certificate that its CA \
                     signed (`semithin serve --tls-cert`), and this client is given the CA \
                     (--ca)"
                        .into()
                }
                CertificateError::BadSignature
                | CertificateError::BadEncoding
                | CertificateError::UnhandledCriticalExtension => {
                    "is damaged or uses something this client cannot check".into()
                }
                other => format!("cannot be trusted ({other:?})"),
            };
            format!("the certificate of the server at {host} {what}")
        }
        E::AlertReceived(AlertDescription::UnknownCA | AlertDescription::BadCertificate) => {
            format!("the server at {host} refused this client's TLS handshake")
        }
        E::AlertReceived(a) => format!(
            "the server at {host} ended the TLS handshake ({a:?}): is it a semithin server, and \
             does it speak HTTPS?"
        ),
        E::NoCertificatesPresented => {
            format!("the server at {host} presented no certificate")
        }
        other => format!("the TLS handshake with {host} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_named_with_the_fix() {
        for (bad, want) in [
            ("127.0.0.1:8470", "no scheme"),
            ("updates.example", "no scheme"),
            ("ftp://updates.example", "http:// or https://, not ftp://"),
            ("http://updates.example:99999", "port"),
            ("http://", "no host"),
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
            assert!(e.contains("https://HOST:PORT"), "{bad}: {e}");
            assert!(!e.contains("relative URL"), "{bad}: {e}");
        }
        check_url("https://updates.example:8470/").unwrap();
        check_url("http://127.0.0.1:8470").unwrap();
    }

    #[test]
    fn a_server_that_does_not_answer_in_time_is_named() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // accepts, reads nothing, answers nothing; the test's end drops it
        let held = std::thread::spawn(move || l.accept().map(|(s, _)| s));
        let c = crate::http::client_builder(None)
            .unwrap()
            .timeout(std::time::Duration::from_millis(300))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let e = c.get(format!("{base}/x")).send().unwrap_err();
        let why = explain(&base, &e).unwrap();
        assert!(why.contains("did not answer in time"), "{why}");
        drop(held.join());
    }

    #[test]
    fn tls_errors_say_what_to_do() {
        let e = tls(
            "https://127.0.0.1:1",
            "127.0.0.1:1",
            &rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert!(
            e.contains("plain HTTP") && e.contains("http://127.0.0.1:1"),
            "{e}"
        );
        let e = tls(
            "https://h:1",
            "h:1",
            &rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(e.contains("--ca FILE"), "{e}");
    }
}
