//! A stack's client applications: a TCP client that sends its requests and waits
//! for each whole answer, then closes; UDP and ICMP echo clients with one request
//! outstanding at a time (answered, refused, or given up after a timeout). They read
//! and write only their own sockets.

use super::*;

pub(super) enum Client {
    Tcp(TcpClient),
    Udp(UdpClient),
    Ping(PingClient),
    /// A connection that failed before its first packet (no local port).
    Unconnected {
        flow: FlowTag,
        status: ConnectionStatus,
    },
}

pub(super) struct TcpClient {
    pub(super) flow: FlowTag,
    pub(super) handle: SocketHandle,
    /// The current request, and how much of it is written to the socket.
    pub(super) request: Vec<u8>,
    pub(super) written: usize,
    /// Bytes of the current answer still to come.
    pub(super) to_receive: usize,
    pub(super) requests_left: u32,
    /// Requests sent so far (the next request's index).
    pub(super) sent_requests: u32,
    /// What the flow's requests are, to build the next one.
    pub(super) messages: Messages,
    pub(super) closing: bool,
    /// The socket is gone: ended by an ICMP error in SYN-SENT, or closed and its
    /// buffers given back.
    pub(super) socket_released: bool,
    /// The path MTU already applied to the connection's MSS.
    pub(super) applied_path_mtu: Option<u16>,
    pub(super) status: ConnectionStatus,
}

/// Request/answer bookkeeping of a datagram client (UDP or ICMP echo): one request
/// outstanding at a time, each answered or given up after [`ANSWER_TIMEOUT`].
pub(super) struct Exchanges {
    pub(super) requests_left: u32,
    pub(super) waiting_until: Option<Instant>,
    pub(super) status: ConnectionStatus,
}

/// What a datagram client does next.
pub(super) enum NextStep {
    Wait,
    Send,
    Done,
}

/// What became of a datagram the client tried to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SendOutcome {
    Sent,
    /// The socket could not take it now; try again at the next poll.
    Blocked,
    /// The stack refused it for good (EMSGSIZE over the path MTU): the request fails.
    Refused,
}

impl Exchanges {
    pub(super) fn new(requests: u32, local_port: u16) -> Self {
        Exchanges {
            requests_left: requests,
            waiting_until: None,
            status: ConnectionStatus {
                local_port,
                ..ConnectionStatus::default()
            },
        }
    }

    pub(super) fn waiting(&self) -> bool {
        self.waiting_until.is_some()
    }

    /// The outstanding request failed with an ICMP error (Linux reports it on the
    /// socket; the client stops waiting for an answer).
    pub(super) fn errored(&mut self) {
        if self.waiting_until.take().is_some() {
            self.requests_left -= 1;
            self.status.failed = true;
        }
    }

    /// The peer refused: ECONNREFUSED on a connected socket ends the exchange.
    pub(super) fn refused(&mut self) {
        self.waiting_until = None;
        self.requests_left = 0;
        self.status.failed = true;
    }

    /// The outstanding request was answered.
    pub(super) fn answered(&mut self) {
        self.status.answers += 1;
        self.status.established = true;
        self.waiting_until = None;
        self.requests_left -= 1;
    }

    /// Gives up the outstanding request once its deadline has passed; then says
    /// whether to send the next request, wait, or stop.
    pub(super) fn next_step(&mut self, now: Instant) -> NextStep {
        if let Some(deadline) = self.waiting_until {
            if now < deadline {
                return NextStep::Wait;
            }
            // Unanswered: this request failed.
            self.waiting_until = None;
            self.requests_left -= 1;
            self.status.failed = true;
        }
        if self.requests_left == 0 {
            self.status.completed = true;
            NextStep::Done
        } else {
            NextStep::Send
        }
    }

    /// After the answers are taken in: gives up an overdue request, then sends the next
    /// one with `send`. True when anything moved.
    pub(super) fn advance(
        &mut self,
        now: Instant,
        progressed: bool,
        send: impl FnOnce() -> SendOutcome,
    ) -> bool {
        match self.next_step(now) {
            NextStep::Wait => progressed,
            NextStep::Done => true,
            NextStep::Send => match send() {
                SendOutcome::Sent => {
                    self.waiting_until = Some(now + ANSWER_TIMEOUT);
                    true
                }
                SendOutcome::Refused => {
                    self.requests_left -= 1;
                    self.status.failed = true;
                    true
                }
                SendOutcome::Blocked => progressed,
            },
        }
    }
}

pub(super) struct UdpClient {
    pub(super) flow: FlowTag,
    pub(super) handle: SocketHandle,
    pub(super) local_port: u16,
    pub(super) dont_fragment: bool,
    pub(super) remote: IpEndpoint,
    pub(super) messages: Messages,
    pub(super) sent_requests: u32,
    pub(super) exchanges: Exchanges,
}

/// How a client builds its requests: the flow's application, name and size.
#[derive(Debug, Clone)]
pub(super) struct Messages {
    pub(super) application: Application,
    pub(super) protocol: Protocol,
    pub(super) flow_name: String,
    pub(super) bytes: usize,
}

impl Messages {
    pub(super) fn request(&self, index: u32) -> Vec<u8> {
        self.application
            .request(self.protocol, &self.flow_name, self.bytes, index)
    }

    pub(super) fn response_len(&self) -> usize {
        self.application
            .response_len(self.protocol, &self.flow_name, self.bytes)
    }
}

pub(super) struct PingClient {
    pub(super) flow: FlowTag,
    pub(super) handle: SocketHandle,
    pub(super) dont_fragment: bool,
    pub(super) remote: Ipv4Addr,
    pub(super) identifier: u16,
    pub(super) sequence: u16,
    pub(super) bytes: usize,
    pub(super) exchanges: Exchanges,
}

pub(super) struct TcpServer {
    pub(super) handle: SocketHandle,
    pub(super) application: Application,
    /// How long one request is, once the connection's flow is known.
    pub(super) request_len: Option<usize>,
    /// Request bytes received and not yet answered.
    pub(super) received: Vec<u8>,
    /// Answer bytes not yet written to the socket.
    pub(super) pending_response: Vec<u8>,
}

/// What a client application reaches of its stack while it runs.
pub(super) struct ClientContext<'a> {
    pub(super) sockets: &'a mut SocketSet<'static>,
    pub(super) path_mtu: &'a FxHashMap<Ipv4Addr, u16>,
    pub(super) reports: &'a mut Vec<StackReport>,
    pub(super) now: Instant,
}

/// Linux refuses a datagram with DF over the known path MTU before it is sent
/// (`ip_append_data` → EMSGSIZE). Returns the path MTU when it does.
pub(super) fn exceeds_path_mtu(
    path_mtu: &FxHashMap<Ipv4Addr, u16>,
    remote: Ipv4Addr,
    ip_len: usize,
    dont_fragment: bool,
) -> Option<u16> {
    let mtu = *path_mtu.get(&remote)?;
    (dont_fragment && ip_len > usize::from(mtu)).then_some(mtu)
}

pub(super) fn run_tcp_client(client: &mut TcpClient, local: &mut ClientContext) -> bool {
    if client.status.completed || client.status.failed || client.socket_released {
        return false;
    }
    let socket = local.sockets.get_mut::<tcp::Socket>(client.handle);
    // A path MTU learned earlier toward this destination (the route exception)
    // bounds the MSS of a new connection too, once the handshake set the peer's.
    if let (Some(remote), tcp::State::Established) = (socket.remote_endpoint(), socket.state()) {
        let IpAddress::Ipv4(address) = remote.addr;
        if let Some(&mtu) = local.path_mtu.get(&address) {
            if client.applied_path_mtu != Some(mtu) {
                client.applied_path_mtu = Some(mtu);
                socket.reduce_mss(usize::from(mtu).saturating_sub(40));
            }
        }
    }
    let mut progressed = false;
    if socket.state() == tcp::State::Established && !client.status.established {
        client.status.established = true;
        progressed = true;
    }
    if !socket.is_open() || socket.state() == tcp::State::Closed {
        // Reset by the peer or timed out.
        if !client.closing {
            client.status.failed = true;
        } else {
            client.status.completed = true;
        }
        return true;
    }
    if client.closing {
        return progressed;
    }
    if client.written < client.request.len() && socket.can_send() {
        if let Ok(sent) = socket.send_slice(&client.request[client.written..]) {
            client.written += sent;
            progressed |= sent > 0;
        }
    }
    // Read in place (no scratch buffer to clear on every poll of every socket).
    while socket.can_recv() {
        match socket.recv(|data| (data.len(), data.len())) {
            Ok(0) | Err(_) => break,
            Ok(count) => {
                client.to_receive = client.to_receive.saturating_sub(count);
                progressed = true;
            }
        }
    }
    if client.written == client.request.len() && client.to_receive == 0 {
        client.status.answers += 1;
        client.requests_left -= 1;
        if client.requests_left == 0 {
            socket.close();
            client.closing = true;
            client.status.completed = true;
        } else {
            client.request = client.messages.request(client.sent_requests);
            client.sent_requests += 1;
            client.written = 0;
            client.to_receive = client.messages.response_len();
        }
        progressed = true;
    }
    progressed
}

pub(super) fn run_udp_client(client: &mut UdpClient, local: &mut ClientContext) -> bool {
    if client.exchanges.status.completed {
        return false;
    }
    let now = local.now;
    let socket = local.sockets.get_mut::<udp::Socket>(client.handle);
    let mut progressed = false;
    while socket.can_recv() {
        let Ok((payload, _)) = socket.recv() else {
            break;
        };
        let count = payload.len();
        if client.exchanges.waiting() && count > 0 {
            client.exchanges.answered();
            progressed = true;
        }
    }
    let remote = client.remote;
    let request = client.messages.request(client.sent_requests);
    let size = request.len() + 28;
    let IpAddress::Ipv4(remote_ip) = remote.addr;
    let refused = exceeds_path_mtu(local.path_mtu, remote_ip, size, client.dont_fragment);
    let sent_requests = &mut client.sent_requests;
    let flow = client.flow;
    let reports = &mut *local.reports;
    client.exchanges.advance(now, progressed, || {
        if let Some(mtu) = refused {
            reports.push(StackReport {
                flow,
                message: format!(
                    "send: EMSGSIZE (message too long): {size} bytes exceed the path MTU {mtu} to {remote_ip}"
                ),
                refused: true,
            });
            return SendOutcome::Refused;
        }
        if socket.can_send() && socket.send_slice(&request, remote).is_ok() {
            *sent_requests += 1;
            SendOutcome::Sent
        } else {
            SendOutcome::Blocked
        }
    })
}

pub(super) fn run_ping_client(client: &mut PingClient, local: &mut ClientContext) -> bool {
    if client.exchanges.status.completed {
        return false;
    }
    let now = local.now;
    let socket = local.sockets.get_mut::<icmp::Socket>(client.handle);
    let mut progressed = false;
    while socket.can_recv() {
        let Ok((data, _)) = socket.recv() else { break };
        let Ok(packet) = Icmpv4Packet::new_checked(data) else {
            continue;
        };
        let Ok(repr) = Icmpv4Repr::parse(&packet, &smoltcp::phy::ChecksumCapabilities::default())
        else {
            continue;
        };
        if let Icmpv4Repr::EchoReply { ident, seq_no, .. } = repr {
            if ident == client.identifier && seq_no == client.sequence && client.exchanges.waiting()
            {
                client.exchanges.answered();
                progressed = true;
            }
        }
    }
    let (identifier, remote, bytes) = (client.identifier, client.remote, client.bytes);
    let refused = exceeds_path_mtu(local.path_mtu, remote, bytes + 28, client.dont_fragment);
    let flow = client.flow;
    let reports = &mut *local.reports;
    let sequence = &mut client.sequence;
    client.exchanges.advance(now, progressed, || {
        if let Some(mtu) = refused {
            reports.push(StackReport {
                flow,
                message: format!("ping: local error: message too long, mtu={mtu} (to {remote})"),
                refused: true,
            });
            return SendOutcome::Refused;
        }
        *sequence = sequence.wrapping_add(1);
        let data = crate::sim::application::text(bytes);
        let repr = Icmpv4Repr::EchoRequest {
            ident: identifier,
            seq_no: *sequence,
            data: &data,
        };
        let Ok(buffer) = socket.send(repr.buffer_len(), IpAddress::Ipv4(remote)) else {
            return SendOutcome::Blocked;
        };
        repr.emit(
            &mut Icmpv4Packet::new_unchecked(buffer),
            &smoltcp::phy::ChecksumCapabilities::default(),
        );
        SendOutcome::Sent
    })
}
