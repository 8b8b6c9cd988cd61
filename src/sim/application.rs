//! What the endpoints' applications put in their payloads: real messages where the
//! port has a well-known protocol, so Wireshark dissects a capture as the real
//! traffic — DNS (RFC 1035) on 53 and mDNS's 5353, over UDP and over TCP with its
//! two-byte length prefix (RFC 1035 §4.2.2); HTTP/1.1 (RFC 9112) on 80, 8080 and any
//! port named `http` — and otherwise plain text no dissector reads as a protocol.
//!
//! Message sizes follow the flow's `bytes`: an HTTP request and its response are
//! both exactly `bytes` long (or the smallest valid message, if `bytes` is smaller);
//! DNS messages have their natural size.

use crate::topology::Protocol;
use std::net::Ipv4Addr;

/// The protocol a flow's payload speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Application {
    /// Text with no protocol structure.
    Opaque,
    Dns,
    Http,
    /// kube-proxy's health check server on a LoadBalancer Service's
    /// `healthCheckNodePort` (externalTrafficPolicy Local): HTTP 200 when the node has
    /// local endpoints, 503 when it has none, with their count in a JSON body
    /// (pkg/proxy/healthcheck/service_health.go).
    KubeProxyHealth {
        local_endpoints: u16,
    },
}

impl Application {
    /// The application on `port` (named `port_name` on the listening pod, if it is).
    pub fn for_port(protocol: Protocol, port: u16, port_name: Option<&str>) -> Application {
        match (protocol, port) {
            (Protocol::Udp | Protocol::Tcp, 53 | 5353) => Application::Dns,
            (Protocol::Tcp, 80 | 8080) => Application::Http,
            (Protocol::Tcp, _) if port_name.is_some_and(|n| n.eq_ignore_ascii_case("http")) => {
                Application::Http
            }
            _ => Application::Opaque,
        }
    }

    /// The client's `index`-th request of a flow named `flow_name` with `bytes` per
    /// request, as the bytes it writes to the socket.
    pub fn request(self, protocol: Protocol, flow_name: &str, bytes: usize, index: u32) -> Vec<u8> {
        match self {
            Application::Opaque => text(bytes),
            Application::Http => http_request(flow_name, bytes),
            Application::KubeProxyHealth { .. } => {
                b"GET /healthz HTTP/1.1\r\nHost: netsim\r\nUser-Agent: netsim\r\n\r\n".to_vec()
            }
            Application::Dns => {
                let query = dns_query(flow_name, index);
                match protocol {
                    Protocol::Tcp => length_prefixed(query),
                    _ => query,
                }
            }
        }
    }

    /// How many bytes the client waits for in answer to one request (TCP).
    pub fn response_len(self, protocol: Protocol, flow_name: &str, bytes: usize) -> usize {
        let request = self.request(protocol, flow_name, bytes, 0);
        self.response(protocol, &request, Ipv4Addr::UNSPECIFIED)
            .len()
    }

    /// The server's answer to one whole `request` (the server's address is `local`).
    pub fn response(self, protocol: Protocol, request: &[u8], local: Ipv4Addr) -> Vec<u8> {
        match self {
            Application::Opaque => text(request.len()),
            Application::Http => http_response(request.len()),
            Application::KubeProxyHealth { local_endpoints } => health_response(local_endpoints),
            Application::Dns => match protocol {
                Protocol::Tcp => {
                    length_prefixed(dns_response(request.get(2..).unwrap_or(&[]), local))
                }
                _ => dns_response(request, local),
            },
        }
    }
}

/// kube-proxy's health answer for a node with `local_endpoints` endpoints.
fn health_response(local_endpoints: u16) -> Vec<u8> {
    let status = if local_endpoints > 0 {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    let body = format!("{{\"localEndpoints\": {local_endpoints}, \"serviceProxyHealthy\": true}}");
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Printable text: a sentence repeated, which no dissector takes for a protocol.
pub fn text(length: usize) -> Vec<u8> {
    const LINE: &[u8] = b"netsim test payload, sent through the emulated datapath.\n";
    LINE.iter().copied().cycle().take(length).collect()
}

fn length_prefixed(message: Vec<u8>) -> Vec<u8> {
    let length = u16::try_from(message.len()).unwrap_or(u16::MAX);
    let mut out = length.to_be_bytes().to_vec();
    out.extend_from_slice(&message);
    out
}

/// The name a flow's DNS query asks for: the flow's name as a label under the
/// reserved `.test` domain (RFC 2606), e.g. `lookup.netsim.test`.
fn query_name(flow_name: &str) -> Vec<String> {
    let label: String = flow_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let label = label.trim_matches('-').to_string();
    let label = if label.is_empty() {
        "query".to_string()
    } else {
        label
    };
    vec![label, "netsim".into(), "test".into()]
}

/// A standard query (RFC 1035 §4.1): recursion desired, one question, type A, class IN.
fn dns_query(flow_name: &str, index: u32) -> Vec<u8> {
    let identifier = u16::try_from((index.wrapping_mul(0x9e37) ^ 0x4e53) & 0xffff).unwrap_or(0);
    let mut message = Vec::with_capacity(64);
    message.extend_from_slice(&identifier.to_be_bytes());
    message.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    message.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    message.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // AN, NS, AR
    for label in query_name(flow_name) {
        message.push(u8::try_from(label.len()).unwrap_or(63));
        message.extend_from_slice(label.as_bytes());
    }
    message.push(0);
    message.extend_from_slice(&1u16.to_be_bytes()); // QTYPE A
    message.extend_from_slice(&1u16.to_be_bytes()); // QCLASS IN
    message
}

/// The answer to a query: same id and question, QR|RD|RA, one A record (a
/// compression pointer to the question name, TTL 30) holding `address`.
fn dns_response(query: &[u8], address: Ipv4Addr) -> Vec<u8> {
    if query.len() < 12 {
        return Vec::new();
    }
    let mut message = query.to_vec();
    message[2..4].copy_from_slice(&0x8180u16.to_be_bytes());
    message[6..8].copy_from_slice(&1u16.to_be_bytes()); // ANCOUNT
    message.extend_from_slice(&[0xc0, 0x0c]); // the name at offset 12
    message.extend_from_slice(&1u16.to_be_bytes()); // TYPE A
    message.extend_from_slice(&1u16.to_be_bytes()); // CLASS IN
    message.extend_from_slice(&30u32.to_be_bytes()); // TTL
    message.extend_from_slice(&4u16.to_be_bytes());
    message.extend_from_slice(&address.octets());
    message
}

/// An HTTP/1.1 message of exactly `length` bytes (or the shortest one this head
/// allows): `head` with a Content-Length header, then a text body.
fn http_message(head: &str, length: usize) -> Vec<u8> {
    let mut body_len = length.saturating_sub(head.len() + 24);
    loop {
        let header =
            format!("{head}Content-Type: text/plain\r\nContent-Length: {body_len}\r\n\r\n");
        let total = header.len() + body_len;
        if total == length || (total > length && body_len == 0) {
            let mut message = header.into_bytes();
            message.extend_from_slice(&text(body_len));
            return message;
        }
        if total > length {
            body_len -= (total - length).min(body_len);
        } else {
            body_len += length - total;
        }
    }
}

fn http_request(flow_name: &str, length: usize) -> Vec<u8> {
    let path: String = flow_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    http_message(
        &format!("POST /{path} HTTP/1.1\r\nHost: netsim.test\r\nUser-Agent: netsim\r\n"),
        length,
    )
}

fn http_response(length: usize) -> Vec<u8> {
    http_message("HTTP/1.1 200 OK\r\nServer: netsim\r\n", length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_messages_have_the_requested_length_and_a_matching_content_length() {
        for length in [0, 50, 100, 101, 999, 1000, 4000] {
            let request = http_request("web", length);
            let text = String::from_utf8(request.clone()).unwrap();
            assert!(text.starts_with("POST /web HTTP/1.1\r\n"));
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let declared: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(declared, body.len());
            if length >= 120 {
                assert_eq!(request.len(), length);
            }
            let response = Application::Http.response(Protocol::Tcp, &request, Ipv4Addr::LOCALHOST);
            assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"));
            assert_eq!(response.len(), request.len().max(response.len()));
        }
    }

    #[test]
    fn dns_answers_the_question_it_was_asked() {
        let query = Application::Dns.request(Protocol::Udp, "resolve api", 0, 3);
        assert_eq!(
            &query[12..],
            b"\x0bresolve-api\x06netsim\x04test\x00\x00\x01\x00\x01"
        );
        let answer = Application::Dns.response(Protocol::Udp, &query, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(&answer[..2], &query[..2], "same id");
        assert_eq!(&answer[2..4], &[0x81, 0x80]);
        assert_eq!(&answer[answer.len() - 4..], &[10, 0, 0, 5]);
        let tcp = Application::Dns.request(Protocol::Tcp, "resolve api", 0, 3);
        assert_eq!(
            usize::from(u16::from_be_bytes([tcp[0], tcp[1]])),
            query.len()
        );
        assert_eq!(
            Application::Dns.response_len(Protocol::Tcp, "resolve api", 0),
            2 + answer.len()
        );
    }

    #[test]
    fn ports_pick_the_application() {
        assert_eq!(
            Application::for_port(Protocol::Udp, 53, None),
            Application::Dns
        );
        assert_eq!(
            Application::for_port(Protocol::Tcp, 8080, None),
            Application::Http
        );
        assert_eq!(
            Application::for_port(Protocol::Tcp, 9000, Some("http")),
            Application::Http
        );
        assert_eq!(
            Application::for_port(Protocol::Udp, 8080, None),
            Application::Opaque
        );
    }
}
