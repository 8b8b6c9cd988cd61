//! Endpoints are real TCP/IP stacks: every pod and host runs a smoltcp `Interface`
//! over a [`SimDevice`] whose frames the runner carries through the datapath. A flow
//! is a real handshake, real segments sized by the MSS the MTU allows, real
//! retransmissions when the network loses something, a real RST from a closed port.
//!
//! The applications on top are small state machines: a TCP client that sends
//! `requests` requests of `bytes` bytes, waits for each equal response and closes; a
//! TCP server that answers each full request with as many bytes; UDP client and echo
//! server; an ICMP echo client (smoltcp's interface answers echo requests itself).

use super::application::Application;
use super::network::EndpointNic;
use crate::packet::{parse_meta, quoted_flow_key, FlowTag, IcmpKind, NO_FLOW};
use crate::topology::{Exchange, Flow, Protocol};
use crate::wire::{
    emit_ethernet, Mac, ETHERNET_HEADER_LEN, ETHERTYPE_IPV4, PROTOCOL_ICMP, PROTOCOL_TCP,
    PROTOCOL_UDP,
};
use rustc_hash::{FxHashMap, FxHashSet};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, IpEndpoint};
use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;

/// How long a UDP or ICMP client waits for each answer before counting it lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a TCP client waits without progress before it gives up (smoltcp aborts
/// the connection, as a socket timeout would).
const TCP_TIMEOUT: Duration = Duration::from_secs(20);
/// Socket buffer sizes (Linux's default `tcp_rmem` is 128 KiB; 32 KiB each way keeps
/// a large topology's memory small and a bulk flow's window open).
const TCP_BUFFER: usize = 32 * 1024;
const UDP_BUFFER: usize = 64 * 1024;
/// Linux's default `net.ipv4.ip_local_port_range`.
const EPHEMERAL_PORTS: std::ops::Range<u16> = 32768..61000;

/// smoltcp's view of the NIC: IP packets in, IP packets out (the runner adds and
/// strips Ethernet, resolving neighbors from the topology).
pub struct SimDevice {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    mtu: usize,
}

pub struct SimRxToken(Vec<u8>);
pub struct SimTxToken<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for SimRxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for SimTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buffer = vec![0; len];
        let result = f(&mut buffer);
        self.0.push(buffer);
        result
    }
}

impl phy::Device for SimDevice {
    type RxToken<'a> = SimRxToken;
    type TxToken<'a> = SimTxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(SimRxToken, SimTxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((SimRxToken(frame), SimTxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<SimTxToken<'_>> {
        Some(SimTxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ip;
        capabilities.max_transmission_unit = self.mtu;
        capabilities
    }
}

/// What happened to a frame handed to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    Delivered,
    /// Nothing listens on the destination port (the stack answers RST / ICMP).
    NoListener,
    /// Not for this endpoint (wrong MAC or address).
    NotForUs,
}

/// A frame an endpoint sends, with its flow tag. `undeliverable` says why it cannot
/// leave the sender: no route (off-subnet without a gateway) or no neighbor (ARP for
/// the next hop fails).
pub struct Departure {
    pub frame: Vec<u8>,
    pub flow: FlowTag,
    pub undeliverable: Option<crate::datapath::DropReason>,
}

/// How one client connection ended (or is going).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStatus {
    pub established: bool,
    pub completed: bool,
    pub failed: bool,
    pub answers: u32,
}

/// An ICMP error as a Linux socket sees it (`icmp_err_convert` in net/ipv4/icmp.c
/// gives each destination-unreachable code an errno and whether it is "fatal").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IcmpError {
    /// Fragmentation needed, with a usable next-hop MTU (RFC 1191).
    FragmentationNeeded { mtu: u16 },
    /// A fatal error: protocol or port unreachable, unknown or prohibited destination.
    Hard,
    /// Net or host unreachable, time exceeded: a soft error.
    Soft,
}

/// The errno Linux gives an ICMP error (`icmp_err_convert`; time exceeded is
/// EHOSTUNREACH in `tcp_v4_err`).
fn errno_name(icmp_type: u8, code: u8) -> &'static str {
    match (icmp_type, code) {
        (3, 0 | 6 | 9 | 11) => "ENETUNREACH (network is unreachable)",
        (3, 2) => "ENOPROTOOPT (protocol not available)",
        (3, 3) => "ECONNREFUSED (connection refused)",
        (3, 4) => "EMSGSIZE (message too long)",
        (3, 5) => "EOPNOTSUPP (source route failed)",
        (3, 7) => "EHOSTDOWN (host is down)",
        (3, 8) => "ENONET (machine is not on the network)",
        _ => "EHOSTUNREACH (no route to host)",
    }
}

impl IcmpError {
    fn classify(icmp_type: u8, code: u8, next_hop_mtu: u16) -> IcmpError {
        const DESTINATION_UNREACHABLE: u8 = 3;
        const FRAGMENTATION_NEEDED: u8 = 4;
        match (icmp_type, code) {
            (DESTINATION_UNREACHABLE, FRAGMENTATION_NEEDED) if next_hop_mtu >= 68 => {
                IcmpError::FragmentationNeeded { mtu: next_hop_mtu }
            }
            // ENOPROTOOPT, ECONNREFUSED, ENETUNREACH/EHOSTDOWN/ENONET (unknown,
            // isolated), administratively prohibited, filtered, precedence: fatal.
            (DESTINATION_UNREACHABLE, 2 | 3 | 6..=10 | 13..=15) => IcmpError::Hard,
            _ => IcmpError::Soft,
        }
    }
}

/// True when a socket's remote endpoint is `remote`.
fn endpoint_is(endpoint: IpEndpoint, remote: (Ipv4Addr, u16)) -> bool {
    let IpAddress::Ipv4(address) = endpoint.addr;
    (address, endpoint.port) == remote
}

/// Clears DF in the IPv4 header of an Ethernet frame (with the checksum update): the
/// sender of a flow with `dont_fragment = false` (IP_PMTUDISC_DONT).
fn clear_dont_fragment(frame: &mut [u8]) {
    let at = ETHERNET_HEADER_LEN + 6;
    let old_word = u16::from_be_bytes([frame[at], frame[at + 1]]);
    let new_word = old_word & !0x4000;
    frame[at..at + 2].copy_from_slice(&new_word.to_be_bytes());
    let sum_at = ETHERNET_HEADER_LEN + 10;
    let sum = u16::from_be_bytes([frame[sum_at], frame[sum_at + 1]]);
    let sum = crate::wire::checksum::update_word(sum, old_word, new_word);
    frame[sum_at..sum_at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// (protocol, local port, remote address, remote port): how a stack maps its traffic
/// back to a flow.
type TagKey = (u8, u16, Ipv4Addr, u16);

enum Client {
    Tcp(TcpClient),
    Udp(UdpClient),
    Ping(PingClient),
}

struct TcpClient {
    flow: FlowTag,
    handle: SocketHandle,
    /// The current request, and how much of it is written to the socket.
    request: Vec<u8>,
    written: usize,
    /// Bytes of the current answer still to come.
    to_receive: usize,
    requests_left: u32,
    /// Requests sent so far (the next request's index).
    sent_requests: u32,
    /// What the flow's requests are, to build the next one.
    messages: Messages,
    closing: bool,
    /// The socket is gone: ended by an ICMP error in SYN-SENT, or closed and its
    /// buffers given back.
    socket_released: bool,
    /// The path MTU already applied to the connection's MSS.
    applied_path_mtu: Option<u16>,
    status: ConnectionStatus,
}

/// Request/answer bookkeeping of a datagram client (UDP or ICMP echo): one request
/// outstanding at a time, each answered or given up after [`ANSWER_TIMEOUT`].
struct Exchanges {
    requests_left: u32,
    waiting_until: Option<Instant>,
    status: ConnectionStatus,
}

/// What a datagram client does next.
enum NextStep {
    Wait,
    Send,
    Done,
}

/// What became of a datagram the client tried to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendOutcome {
    Sent,
    /// The socket could not take it now; try again at the next poll.
    Blocked,
    /// The stack refused it for good (EMSGSIZE over the path MTU): the request fails.
    Refused,
}

impl Exchanges {
    fn new(requests: u32) -> Self {
        Exchanges {
            requests_left: requests,
            waiting_until: None,
            status: ConnectionStatus::default(),
        }
    }

    fn waiting(&self) -> bool {
        self.waiting_until.is_some()
    }

    /// The outstanding request failed with an ICMP error (Linux reports it on the
    /// socket; the client stops waiting for an answer).
    fn errored(&mut self) {
        if self.waiting_until.take().is_some() {
            self.requests_left -= 1;
            self.status.failed = true;
        }
    }

    /// The peer refused: ECONNREFUSED on a connected socket ends the exchange.
    fn refused(&mut self) {
        self.waiting_until = None;
        self.requests_left = 0;
        self.status.failed = true;
    }

    /// The outstanding request was answered.
    fn answered(&mut self) {
        self.status.answers += 1;
        self.status.established = true;
        self.waiting_until = None;
        self.requests_left -= 1;
    }

    /// Gives up the outstanding request once its deadline has passed; then says
    /// whether to send the next request, wait, or stop.
    fn next_step(&mut self, now: Instant) -> NextStep {
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
    fn advance(
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

struct UdpClient {
    flow: FlowTag,
    handle: SocketHandle,
    local_port: u16,
    dont_fragment: bool,
    remote: IpEndpoint,
    messages: Messages,
    sent_requests: u32,
    exchanges: Exchanges,
}

/// How a client builds its requests: the flow's application, name and size.
#[derive(Debug, Clone)]
struct Messages {
    application: Application,
    protocol: Protocol,
    flow_name: String,
    bytes: usize,
}

impl Messages {
    fn request(&self, index: u32) -> Vec<u8> {
        self.application
            .request(self.protocol, &self.flow_name, self.bytes, index)
    }

    fn response_len(&self) -> usize {
        self.application
            .response_len(self.protocol, &self.flow_name, self.bytes)
    }
}

struct PingClient {
    flow: FlowTag,
    handle: SocketHandle,
    dont_fragment: bool,
    remote: Ipv4Addr,
    identifier: u16,
    sequence: u16,
    bytes: usize,
    exchanges: Exchanges,
}

struct TcpServer {
    handle: SocketHandle,
    application: Application,
    /// How long one request is, once the connection's flow is known.
    request_len: Option<usize>,
    /// Request bytes received and not yet answered.
    received: Vec<u8>,
    /// Answer bytes not yet written to the socket.
    pending_response: Vec<u8>,
}

/// One endpoint's stack and applications.
pub struct Stack {
    pub nic: EndpointNic,
    iface: Interface,
    device: SimDevice,
    sockets: SocketSet<'static>,
    tcp_listen: Vec<u16>,
    udp_listen: Vec<u16>,
    /// Listening TCP sockets per port, and the SYNs queued for each port that the
    /// stack has not processed yet (each needs a listening socket of its own).
    tcp_listeners: BTreeMap<u16, Vec<SocketHandle>>,
    queued_syns: BTreeMap<u16, usize>,
    tcp_servers: Vec<TcpServer>,
    udp_servers: Vec<(SocketHandle, Application, u16)>,
    /// The application on each listening TCP port.
    tcp_applications: BTreeMap<u16, Application>,
    /// The application on each listening UDP port (its socket is made on first use).
    udp_applications: BTreeMap<u16, Application>,
    clients: Vec<Client>,
    client_ports: FxHashSet<(u8, u16)>,
    tags: FxHashMap<TagKey, FlowTag>,
    random: u64,
    /// The flow of each datagram the stack fragmented, by IP identification.
    fragment_tags: FxHashMap<u16, FlowTag>,
    /// Path MTU per destination, learned from ICMP fragmentation-needed (the kernel's
    /// route exception cache, `ipv4_sk_update_pmtu`).
    path_mtu: FxHashMap<Ipv4Addr, u16>,
    /// What the stack reported to applications (errors from ICMP) and what it refused
    /// locally (EMSGSIZE), since the runner last looked.
    reports: Vec<StackReport>,
}

/// Something an endpoint's stack told an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackReport {
    pub flow: FlowTag,
    /// What the application saw, as `strace` would show it.
    pub message: String,
    /// The stack refused to send the datagram (a drop at the sender).
    pub refused: bool,
}

/// A TCP socket with [`TCP_BUFFER`] bytes of buffer each way.
fn new_tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
    )
}

/// A UDP socket with room for 64 datagrams each way.
fn new_udp_socket() -> udp::Socket<'static> {
    udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; UDP_BUFFER]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; UDP_BUFFER]),
    )
}

impl Stack {
    pub fn new(nic: EndpointNic, seed: u64, now: Instant) -> Self {
        let mut device = SimDevice {
            rx: VecDeque::new(),
            tx: Vec::new(),
            mtu: usize::from(nic.mtu),
        };
        let mut config = Config::new(HardwareAddress::Ip);
        let random = seed ^ (u64::from(u32::from(nic.ip)) << 16) ^ 0x9e37_79b9_7f4a_7c15;
        config.random_seed = random;
        let mut iface = Interface::new(config, &mut device, now);
        iface.update_ip_addrs(|addresses| {
            let _ = addresses.push(IpCidr::new(
                IpAddress::Ipv4(nic.ip),
                nic.subnet.prefix_len(),
            ));
        });
        // A default route is needed for off-subnet destinations; with Medium::Ip its
        // address only has to exist (the runner picks the next-hop MAC).
        let gateway = Ipv4Addr::from(u32::from(nic.subnet.network()) + 1);
        let _ = iface.routes_mut().add_default_ipv4_route(gateway);
        Stack {
            nic,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            tcp_listen: Vec::new(),
            udp_listen: Vec::new(),
            tcp_listeners: BTreeMap::new(),
            queued_syns: BTreeMap::new(),
            tcp_applications: BTreeMap::new(),
            udp_applications: BTreeMap::new(),
            tcp_servers: Vec::new(),
            udp_servers: Vec::new(),
            clients: Vec::new(),
            client_ports: FxHashSet::default(),
            tags: FxHashMap::default(),
            random,
            fragment_tags: FxHashMap::default(),
            path_mtu: FxHashMap::default(),
            reports: Vec::new(),
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*
        self.random ^= self.random >> 12;
        self.random ^= self.random << 25;
        self.random ^= self.random >> 27;
        self.random.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn ephemeral_port(&mut self, protocol: u8) -> u16 {
        loop {
            let span = u64::from(EPHEMERAL_PORTS.end - EPHEMERAL_PORTS.start);
            let port =
                EPHEMERAL_PORTS.start + u16::try_from(self.next_random() % span).unwrap_or(0);
            if self.client_ports.insert((protocol, port)) {
                return port;
            }
        }
    }

    /// Opens a listening port (named `name` on a pod, if it is): a server that
    /// answers each request with its application's response.
    pub fn listen(&mut self, protocol: Protocol, port: u16, name: Option<&str>) {
        let application = Application::for_port(protocol, port, name);
        match protocol {
            // The sockets themselves are made when the first segment or datagram
            // for the port arrives ([`Stack::receive`]): no buffers until then.
            Protocol::Tcp => {
                if !self.tcp_listen.contains(&port) {
                    self.tcp_listen.push(port);
                    self.tcp_applications.insert(port, application);
                }
            }
            Protocol::Udp => {
                if !self.udp_listen.contains(&port) {
                    self.udp_listen.push(port);
                    self.udp_applications.insert(port, application);
                }
            }
            Protocol::Icmp => {}
        }
    }

    /// A server socket for a listening port, made when the first traffic for it
    /// arrives: a listening TCP socket for a SYN when none listens (a listen backlog:
    /// one per connection being set up), the UDP socket for a datagram.
    fn open_server_socket(&mut self, protocol: u8, port: u16, tcp_flags: u8) {
        match protocol {
            PROTOCOL_TCP
                if tcp_flags & crate::packet::tcp_flags::SYN != 0
                    && tcp_flags & crate::packet::tcp_flags::ACK == 0
                    && self.tcp_listen.contains(&port) =>
            {
                let queued = self.queued_syns.entry(port).or_insert(0);
                *queued += 1;
                let queued = *queued;
                let listening = self.tcp_listeners.get(&port).map_or(0, Vec::len);
                if listening < queued {
                    self.add_tcp_listener(port);
                }
            }
            PROTOCOL_UDP => {
                if let Some(&application) = self.udp_applications.get(&port) {
                    if !self.udp_servers.iter().any(|(_, _, p)| *p == port) {
                        let mut socket = new_udp_socket();
                        let _ = socket.bind(port);
                        let handle = self.sockets.add(socket);
                        self.udp_servers.push((handle, application, port));
                    }
                }
            }
            _ => {}
        }
    }

    fn add_tcp_listener(&mut self, port: u16) {
        let mut socket = new_tcp_socket();
        let _ = socket.listen(port);
        let handle = self.sockets.add(socket);
        self.tcp_listeners.entry(port).or_default().push(handle);
    }

    /// Starts one connection of `flow` (tagged `tag`) speaking `application`.
    pub fn start(&mut self, tag: FlowTag, flow: &Flow, application: Application) {
        let remote_ip = flow.destination_ip;
        let bytes = usize::try_from(flow.bytes).unwrap_or(0);
        let messages = Messages {
            application,
            protocol: flow.protocol,
            flow_name: flow.name.clone(),
            bytes,
        };
        match (flow.protocol, flow.exchange) {
            (Protocol::Tcp, _) => {
                let local_port = self.ephemeral_port(PROTOCOL_TCP);
                let mut socket = new_tcp_socket();
                socket.set_timeout(Some(TCP_TIMEOUT));
                let remote = IpEndpoint::new(IpAddress::Ipv4(remote_ip), flow.destination_port);
                let connected = socket
                    .connect(self.iface.context(), remote, local_port)
                    .is_ok();
                let handle = self.sockets.add(socket);
                self.tags.insert(
                    (PROTOCOL_TCP, local_port, remote_ip, flow.destination_port),
                    tag,
                );
                let status = ConnectionStatus {
                    failed: !connected,
                    ..ConnectionStatus::default()
                };
                self.clients.push(Client::Tcp(TcpClient {
                    flow: tag,
                    handle,
                    request: messages.request(0),
                    written: 0,
                    to_receive: messages.response_len(),
                    requests_left: flow.requests,
                    sent_requests: 1,
                    messages,
                    closing: false,
                    socket_released: false,
                    applied_path_mtu: None,
                    status,
                }));
            }
            (Protocol::Udp, _) => {
                let local_port = self.ephemeral_port(PROTOCOL_UDP);
                let mut socket = new_udp_socket();
                let _ = socket.bind(local_port);
                let handle = self.sockets.add(socket);
                self.tags.insert(
                    (PROTOCOL_UDP, local_port, remote_ip, flow.destination_port),
                    tag,
                );
                let remote = IpEndpoint::new(IpAddress::Ipv4(remote_ip), flow.destination_port);
                self.clients.push(Client::Udp(UdpClient {
                    flow: tag,
                    handle,
                    local_port,
                    dont_fragment: flow.dont_fragment,
                    remote,
                    messages,
                    sent_requests: 0,
                    exchanges: Exchanges::new(flow.requests),
                }));
            }
            (Protocol::Icmp, Exchange::Ping | Exchange::RequestResponse) => {
                let identifier = self.ephemeral_port(PROTOCOL_ICMP);
                let mut socket = icmp::Socket::new(
                    icmp::PacketBuffer::new(
                        vec![icmp::PacketMetadata::EMPTY; 16],
                        vec![0; UDP_BUFFER],
                    ),
                    icmp::PacketBuffer::new(
                        vec![icmp::PacketMetadata::EMPTY; 16],
                        vec![0; UDP_BUFFER],
                    ),
                );
                let _ = socket.bind(icmp::Endpoint::Ident(identifier));
                let handle = self.sockets.add(socket);
                self.tags
                    .insert((PROTOCOL_ICMP, identifier, remote_ip, identifier), tag);
                self.clients.push(Client::Ping(PingClient {
                    flow: tag,
                    handle,
                    dont_fragment: flow.dont_fragment,
                    remote: remote_ip,
                    identifier,
                    sequence: 0,
                    bytes,
                    exchanges: Exchanges::new(flow.requests),
                }));
            }
        }
    }

    /// Hands a frame to the stack. Learns which flow the remote side belongs to, so
    /// the stack's answers carry the same tag.
    pub fn receive(&mut self, frame: &[u8], flow: FlowTag) -> Arrival {
        let Ok(meta) = parse_meta(frame) else {
            return Arrival::NotForUs;
        };
        if meta.ethertype != ETHERTYPE_IPV4
            || meta.destination_mac != self.nic.mac
            || meta.key.destination != self.nic.ip
        {
            return Arrival::NotForUs;
        }
        let key = meta.key;
        let fragment = crate::engine::reassembly::is_fragment(frame);
        if flow != NO_FLOW
            && !meta.is_later_fragment
            && !matches!(meta.icmp, IcmpKind::Error { .. })
        {
            self.tags
                .entry((
                    key.protocol,
                    key.destination_port,
                    key.source,
                    key.source_port,
                ))
                .or_insert(flow);
        }
        if let IcmpKind::Error { icmp_type, code } = meta.icmp {
            self.react_to_icmp_error(frame, icmp_type, code);
        }
        if !meta.is_later_fragment {
            self.open_server_socket(key.protocol, key.destination_port, meta.tcp_flags);
        }
        let arrival = match key.protocol {
            // A fragment goes to the stack's reassembly (smoltcp
            // proto-ipv4-fragmentation); the whole datagram then finds its socket.
            _ if fragment => Arrival::Delivered,
            PROTOCOL_TCP
                if !self.tcp_listen.contains(&key.destination_port)
                    && !self
                        .client_ports
                        .contains(&(PROTOCOL_TCP, key.destination_port)) =>
            {
                Arrival::NoListener
            }
            PROTOCOL_UDP
                if !self.udp_listen.contains(&key.destination_port)
                    && !self
                        .client_ports
                        .contains(&(PROTOCOL_UDP, key.destination_port)) =>
            {
                Arrival::NoListener
            }
            _ => Arrival::Delivered,
        };
        self.device
            .rx
            .push_back(frame[ETHERNET_HEADER_LEN..].to_vec());
        arrival
    }

    /// Runs the stack and its applications at `now`; returns the frames it sends.
    pub fn poll(&mut self, now: Instant, flows: &[Flow]) -> Vec<Departure> {
        for _ in 0..64 {
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            self.replace_used_listeners();
            let progressed = self.run_applications(now, flows);
            if !progressed && self.device.rx.is_empty() {
                break;
            }
        }
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        let packets = std::mem::take(&mut self.device.tx);
        packets
            .into_iter()
            .filter(|ip_packet| ip_packet.len() >= 20)
            .map(|ip_packet| self.frame(ip_packet, flows))
            .collect()
    }

    /// When the stack next needs to run (a timer), if ever.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let stack = self.iface.poll_at(now, &self.sockets);
        let applications = self.clients.iter().filter_map(|client| match client {
            Client::Udp(c) => c.exchanges.waiting_until,
            Client::Ping(c) => c.exchanges.waiting_until,
            Client::Tcp(_) => None,
        });
        stack.into_iter().chain(applications).min()
    }

    /// Status of every client connection, by flow tag, in start order.
    pub fn client_status(&self) -> Vec<(FlowTag, ConnectionStatus)> {
        self.clients
            .iter()
            .map(|client| match client {
                Client::Tcp(c) => (c.flow, c.status),
                Client::Udp(c) => (c.flow, c.exchanges.status),
                Client::Ping(c) => (c.flow, c.exchanges.status),
            })
            .collect()
    }

    /// What the stack reported to applications since the last call; a refused
    /// datagram (EMSGSIZE) is a drop at this endpoint.
    pub fn take_reports(&mut self) -> Vec<StackReport> {
        std::mem::take(&mut self.reports)
    }

    fn report(&mut self, flow: FlowTag, message: String) {
        self.reports.push(StackReport {
            flow,
            message,
            refused: false,
        });
    }

    /// How a Linux endpoint reacts to an ICMP error about a packet it sent
    /// (`icmp_unreach` → `tcp_v4_err` / `__udp4_lib_err` / `ping_err`):
    ///
    /// * fragmentation needed: the path MTU to that destination is lowered (kept per
    ///   destination, as the kernel's route exception); a TCP connection lowers its
    ///   MSS to MTU − 40 and resends at once (`tcp_v4_mtu_reduced`), a datagram
    ///   socket with DF gets EMSGSIZE and refuses later datagrams over it;
    /// * any other destination unreachable or time exceeded aborts a TCP connection
    ///   still in SYN-SENT (`tcp_v4_err` → `tcp_done`, no reset sent); on an
    ///   established connection it is a soft error and retransmission goes on;
    /// * port unreachable (and the other "hard" codes of `icmp_err_convert`) refuses
    ///   a UDP client (ECONNREFUSED); a ping client sees the error and moves on.
    fn react_to_icmp_error(&mut self, frame: &[u8], icmp_type: u8, code: u8) {
        let Ok(packet) = crate::packet::Packet::from_frame(frame, NO_FLOW) else {
            return;
        };
        let Some(quoted) = quoted_flow_key(&packet) else {
            return;
        };
        if quoted.source != self.nic.ip {
            return;
        }
        let l4 = packet.meta.l4_offset;
        let next_hop_mtu = frame
            .get(l4 + 6..l4 + 8)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        let error = IcmpError::classify(icmp_type, code, next_hop_mtu);
        if let IcmpError::FragmentationNeeded { mtu } = error {
            let known = self.path_mtu.entry(quoted.destination).or_insert(u16::MAX);
            *known = (*known).min(mtu);
        }
        let remote = (quoted.destination, quoted.destination_port);
        let from = packet.meta.key.source;
        let errno = errno_name(icmp_type, code);
        match quoted.protocol {
            PROTOCOL_TCP => self.tcp_error(quoted.source_port, remote, error, errno, from),
            PROTOCOL_UDP => {
                for client in &mut self.clients {
                    if let Client::Udp(c) = client {
                        if c.local_port == quoted.source_port && endpoint_is(c.remote, remote) {
                            if error != IcmpError::Soft {
                                self.reports.push(StackReport {
                                    flow: c.flow,
                                    message: format!("recv: {errno}, ICMP from {from}"),
                                    refused: false,
                                });
                            }
                            match error {
                                IcmpError::Hard => c.exchanges.refused(),
                                IcmpError::FragmentationNeeded { .. } => c.exchanges.errored(),
                                IcmpError::Soft => {}
                            }
                        }
                    }
                }
            }
            PROTOCOL_ICMP => {
                for client in &mut self.clients {
                    if let Client::Ping(c) = client {
                        if c.identifier == quoted.source_port && c.remote == quoted.destination {
                            if c.exchanges.waiting() {
                                self.reports.push(StackReport {
                                    flow: c.flow,
                                    message: format!(
                                        "ping: seq {}: {errno}, ICMP from {from}",
                                        c.sequence
                                    ),
                                    refused: false,
                                });
                            }
                            c.exchanges.errored();
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// A TCP socket's reaction to an ICMP error about one of its segments.
    fn tcp_error(
        &mut self,
        local_port: u16,
        remote: (Ipv4Addr, u16),
        error: IcmpError,
        errno: &str,
        from: Ipv4Addr,
    ) {
        let matching: Vec<SocketHandle> = self
            .sockets
            .iter()
            .filter_map(|(handle, socket)| match socket {
                smoltcp::socket::Socket::Tcp(tcp) => {
                    let local = tcp.local_endpoint()?;
                    let peer = tcp.remote_endpoint()?;
                    (local.port == local_port && endpoint_is(peer, remote)).then_some(handle)
                }
                _ => None,
            })
            .collect();
        for handle in matching {
            match error {
                IcmpError::FragmentationNeeded { mtu } => {
                    let mss = usize::from(mtu).saturating_sub(40);
                    self.sockets.get_mut::<tcp::Socket>(handle).reduce_mss(mss);
                }
                IcmpError::Hard | IcmpError::Soft => {
                    let state = self.sockets.get::<tcp::Socket>(handle).state();
                    if matches!(state, tcp::State::SynSent | tcp::State::SynReceived) {
                        self.abort_quietly(handle, &format!("connect: {errno}, ICMP from {from}"));
                    }
                }
            }
        }
    }

    /// Ends a connection the way `tcp_done` does: the socket is gone, no reset is sent.
    fn abort_quietly(&mut self, handle: SocketHandle, note: &str) {
        let mut aborted = Vec::new();
        for client in &mut self.clients {
            if let Client::Tcp(c) = client {
                if c.handle == handle && !c.status.completed {
                    c.status.failed = true;
                    c.socket_released = true;
                    aborted.push(c.flow);
                }
            }
        }
        for flow in aborted {
            self.report(flow, note.to_string());
        }
        self.tcp_servers.retain(|server| server.handle != handle);
        self.sockets.remove(handle);
    }

    /// Wraps an IP packet from smoltcp in Ethernet toward the right neighbor and finds
    /// its flow tag. A destination with no neighbor is not sent (ARP would fail).
    fn frame(&mut self, ip_packet: Vec<u8>, flows: &[Flow]) -> Departure {
        let destination = Ipv4Addr::new(ip_packet[16], ip_packet[17], ip_packet[18], ip_packet[19]);
        use crate::datapath::DropReason;
        let next_mac: Result<Mac, DropReason> = if self.nic.subnet.contains(&destination) {
            self.nic
                .neighbors
                .get(&destination)
                .copied()
                .ok_or(DropReason::NoNeighbor)
        } else {
            self.nic.gateway_mac.ok_or(DropReason::NoRoute)
        };
        let mut frame = vec![0u8; ETHERNET_HEADER_LEN + ip_packet.len()];
        emit_ethernet(
            &mut frame,
            next_mac.unwrap_or_default(),
            self.nic.mac,
            ETHERTYPE_IPV4,
        );
        frame[ETHERNET_HEADER_LEN..].copy_from_slice(&ip_packet);
        let flow = self.tag_of(&frame);
        if flows.get(flow as usize).is_some_and(|f| !f.dont_fragment) {
            clear_dont_fragment(&mut frame);
        }
        Departure {
            frame,
            flow,
            undeliverable: next_mac.err(),
        }
    }

    fn tag_of(&mut self, frame: &[u8]) -> FlowTag {
        let Ok(meta) = parse_meta(frame) else {
            return NO_FLOW;
        };
        // Later fragments carry no ports: they belong to the flow of the first
        // fragment with the same identification.
        let identification = u16::from_be_bytes([frame[18], frame[19]]);
        if meta.is_later_fragment {
            return self
                .fragment_tags
                .get(&identification)
                .copied()
                .unwrap_or(NO_FLOW);
        }
        let tag = self.tag_of_whole(&meta, frame);
        if crate::engine::reassembly::is_fragment(frame) {
            self.fragment_tags.insert(identification, tag);
        }
        tag
    }

    fn tag_of_whole(&self, meta: &crate::packet::Meta, frame: &[u8]) -> FlowTag {
        let key = if matches!(meta.icmp, IcmpKind::Error { .. }) {
            // An error the stack sends about a packet it received: that packet's flow.
            let Ok(packet) = crate::packet::Packet::from_frame(frame, NO_FLOW) else {
                return NO_FLOW;
            };
            match quoted_flow_key(&packet) {
                Some(quoted) => (
                    quoted.protocol,
                    quoted.destination_port,
                    quoted.source,
                    quoted.source_port,
                ),
                None => return NO_FLOW,
            }
        } else {
            (
                meta.key.protocol,
                meta.key.source_port,
                meta.key.destination,
                meta.key.destination_port,
            )
        };
        self.tags.get(&key).copied().unwrap_or(NO_FLOW)
    }

    /// A listening TCP socket that accepted a connection becomes that connection's
    /// server; the next SYN gets a fresh listening socket (a listen backlog).
    fn replace_used_listeners(&mut self) {
        self.queued_syns.clear();
        let mut used: Vec<(u16, SocketHandle)> = Vec::new();
        for (port, handles) in &mut self.tcp_listeners {
            let sockets = &self.sockets;
            handles.retain(|handle| {
                let listening = sockets.get::<tcp::Socket>(*handle).is_listening();
                if !listening {
                    used.push((*port, *handle));
                }
                listening
            });
        }
        for (port, handle) in used {
            let application = self
                .tcp_applications
                .get(&port)
                .copied()
                .unwrap_or(Application::Opaque);
            self.tcp_servers.push(TcpServer {
                handle,
                application,
                request_len: None,
                received: Vec::new(),
                pending_response: Vec::new(),
            });
        }
    }

    fn run_applications(&mut self, now: Instant, flows: &[Flow]) -> bool {
        let mut progressed = false;
        for index in 0..self.tcp_servers.len() {
            progressed |= self.run_tcp_server(index, flows);
        }
        for index in 0..self.udp_servers.len() {
            let (handle, application, _) = self.udp_servers[index];
            progressed |= self.run_udp_server(handle, application);
        }
        let mut clients = std::mem::take(&mut self.clients);
        for client in &mut clients {
            let mut local = ClientContext {
                sockets: &mut self.sockets,
                path_mtu: &self.path_mtu,
                reports: &mut self.reports,
                now,
            };
            progressed |= match client {
                Client::Tcp(c) => run_tcp_client(c, &mut local),
                Client::Udp(c) => run_udp_client(c, &mut local),
                Client::Ping(c) => run_ping_client(c, &mut local),
            };
        }
        self.clients = clients;
        self.release_closed_sockets();
        progressed
    }

    /// Gives back the buffers of connections that are over (closed, or in TIME-WAIT,
    /// where Linux keeps only a small timewait socket without buffers), so memory
    /// follows the connections open now, not every connection ever made.
    fn release_closed_sockets(&mut self) {
        let over = |state: tcp::State| matches!(state, tcp::State::Closed | tcp::State::TimeWait);
        let sockets = &mut self.sockets;
        self.tcp_servers.retain(|server| {
            let done = over(sockets.get::<tcp::Socket>(server.handle).state());
            if done {
                sockets.remove(server.handle);
            }
            !done
        });
        for client in &mut self.clients {
            if let Client::Tcp(c) = client {
                let finished = c.status.completed || c.status.failed;
                if finished
                    && !c.socket_released
                    && over(sockets.get::<tcp::Socket>(c.handle).state())
                {
                    sockets.remove(c.handle);
                    c.socket_released = true;
                }
            }
        }
    }

    fn run_tcp_server(&mut self, index: usize, flows: &[Flow]) -> bool {
        let handle = self.tcp_servers[index].handle;
        if self.tcp_servers[index].request_len.is_none() {
            let socket = self.sockets.get::<tcp::Socket>(handle);
            if let (Some(local), Some(remote)) = (socket.local_endpoint(), socket.remote_endpoint())
            {
                let IpAddress::Ipv4(remote_ip) = remote.addr;
                let tag = self
                    .tags
                    .get(&(PROTOCOL_TCP, local.port, remote_ip, remote.port))
                    .copied();
                let application = self.tcp_servers[index].application;
                let length = tag.and_then(|tag| flows.get(tag as usize)).map(|flow| {
                    let bytes = usize::try_from(flow.bytes).unwrap_or(1);
                    application
                        .request(Protocol::Tcp, &flow.name, bytes, 0)
                        .len()
                });
                self.tcp_servers[index].request_len = Some(length.unwrap_or(1).max(1));
            }
        }
        let local_ip = self.nic.ip;
        let server = &mut self.tcp_servers[index];
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        let mut progressed = false;
        let mut buffer = [0u8; 16 * 1024];
        while socket.can_recv() {
            match socket.recv_slice(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(count) => {
                    progressed = true;
                    server.received.extend_from_slice(&buffer[..count]);
                    let length = server.request_len.unwrap_or(1);
                    while server.received.len() >= length {
                        let request: Vec<u8> = server.received.drain(..length).collect();
                        let response =
                            server
                                .application
                                .response(Protocol::Tcp, &request, local_ip);
                        server.pending_response.extend_from_slice(&response);
                    }
                }
            }
        }
        if !server.pending_response.is_empty() && socket.can_send() {
            if let Ok(sent) = socket.send_slice(&server.pending_response) {
                progressed |= sent > 0;
                server.pending_response.drain(..sent);
            }
        }
        if socket.state() == tcp::State::CloseWait && server.pending_response.is_empty() {
            socket.close();
            progressed = true;
        }
        progressed
    }

    fn run_udp_server(&mut self, handle: SocketHandle, application: Application) -> bool {
        let local_ip = self.nic.ip;
        let socket = self.sockets.get_mut::<udp::Socket>(handle);
        let mut progressed = false;
        let mut buffer = vec![0u8; UDP_BUFFER];
        while socket.can_recv() {
            let Ok((count, metadata)) = socket.recv_slice(&mut buffer) else {
                break;
            };
            let request = &buffer[..count];
            let response = match application {
                // An echo server: the datagram back as it came.
                Application::Opaque => request.to_vec(),
                _ => application.response(Protocol::Udp, request, local_ip),
            };
            let _ = socket.send_slice(&response, metadata.endpoint);
            progressed = true;
        }
        progressed
    }
}

/// What a client application reaches of its stack while it runs.
struct ClientContext<'a> {
    sockets: &'a mut SocketSet<'static>,
    path_mtu: &'a FxHashMap<Ipv4Addr, u16>,
    reports: &'a mut Vec<StackReport>,
    now: Instant,
}

/// Linux refuses a datagram with DF over the known path MTU before it is sent
/// (`ip_append_data` → EMSGSIZE). Returns the path MTU when it does.
fn exceeds_path_mtu(
    path_mtu: &FxHashMap<Ipv4Addr, u16>,
    remote: Ipv4Addr,
    ip_len: usize,
    dont_fragment: bool,
) -> Option<u16> {
    let mtu = *path_mtu.get(&remote)?;
    (dont_fragment && ip_len > usize::from(mtu)).then_some(mtu)
}

fn run_tcp_client(client: &mut TcpClient, local: &mut ClientContext) -> bool {
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
    let mut buffer = [0u8; 16 * 1024];
    while socket.can_recv() {
        match socket.recv_slice(&mut buffer) {
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

fn run_udp_client(client: &mut UdpClient, local: &mut ClientContext) -> bool {
    if client.exchanges.status.completed {
        return false;
    }
    let now = local.now;
    let socket = local.sockets.get_mut::<udp::Socket>(client.handle);
    let mut progressed = false;
    let mut buffer = vec![0u8; UDP_BUFFER];
    while socket.can_recv() {
        let Ok((count, _)) = socket.recv_slice(&mut buffer) else {
            break;
        };
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

fn run_ping_client(client: &mut PingClient, local: &mut ClientContext) -> bool {
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
