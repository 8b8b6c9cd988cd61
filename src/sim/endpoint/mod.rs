//! Endpoints are real TCP/IP stacks: every pod and host runs a smoltcp `Interface`
//! over a [`SimDevice`] whose frames the runner carries through the datapath. A flow
//! is a real handshake, real segments sized by the MSS the MTU allows, real
//! retransmissions when the network loses something, a real RST from a closed port.
//!
//! The applications on top are small state machines (`clients`; the messages they
//! exchange are `sim::application`'s): a TCP client that sends `requests` requests and
//! waits for each whole answer, then closes; a TCP server that answers each whole
//! request; UDP client and server; an ICMP echo client (smoltcp's interface answers
//! echo requests itself). The stack reacts to ICMP errors as Linux does
//! (`icmp_errors`). A stack is built on first use, its server sockets when the
//! first SYN or datagram arrives, and closed connections give their buffers back.

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

mod clients;
mod icmp_errors;

use clients::*;

/// How long a UDP or ICMP client waits for each answer before counting it lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a TCP client waits without progress before it gives up (smoltcp aborts
/// the connection, as a socket timeout would).
const TCP_TIMEOUT: Duration = Duration::from_secs(20);
/// Socket buffer sizes (Linux's default `tcp_rmem` is 128 KiB; 32 KiB each way keeps
/// a large topology's memory small and a bulk flow's window open).
const TCP_BUFFER: usize = 32 * 1024;
/// The buffers of a stack holding many connections (more than one shard): smoltcp
/// allocates a socket's buffers up front where Linux grows them from `tcp_rmem`'s
/// 4 KiB minimum as data comes, so tens of thousands of connections get small ones.
const TCP_BUFFER_CROWDED: usize = 2 * 1024;
/// Sockets polled together. smoltcp walks every socket of the set it polls, so a
/// stack keeps its connections in shards of this many and polls only the shard a
/// packet or a timer concerns: the cost of a packet does not grow with the number
/// of connections.
const SHARD_SOCKETS: usize = 8;
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
    /// The client's local port (a TCP/UDP source port, an echo identifier).
    pub local_port: u16,
    /// Why the stack itself failed the connection, when it knows (`EADDRNOTAVAIL`,
    /// an ICMP error's errno).
    pub failure: Option<&'static str>,
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

/// Connections polled together (see [`SHARD_SOCKETS`]): their sockets and the
/// applications on them.
pub(super) struct Shard {
    sockets: SocketSet<'static>,
    /// Listening TCP sockets per port (a listen backlog: one per connection being
    /// set up).
    tcp_listeners: BTreeMap<u16, Vec<SocketHandle>>,
    tcp_servers: Vec<TcpServer>,
    udp_servers: Vec<(SocketHandle, Application, u16)>,
    clients: Vec<Client>,
    /// Sockets ever opened here: a shard takes new connections until it is full.
    opened: usize,
    /// Its entry in the stack's wake-up set.
    scheduled: Option<Instant>,
}

impl Shard {
    fn new() -> Self {
        Shard {
            sockets: SocketSet::new(Vec::new()),
            tcp_listeners: BTreeMap::new(),
            tcp_servers: Vec::new(),
            udp_servers: Vec::new(),
            clients: Vec::new(),
            opened: 0,
            scheduled: None,
        }
    }
}

/// One endpoint's stack and applications.
pub struct Stack {
    pub nic: EndpointNic,
    iface: Interface,
    device: SimDevice,
    shards: Vec<Shard>,
    tcp_listen: Vec<u16>,
    udp_listen: Vec<u16>,
    /// The application on each listening TCP port.
    tcp_applications: BTreeMap<u16, Application>,
    /// The application on each listening UDP port (its socket is made on first use).
    udp_applications: BTreeMap<u16, Application>,
    /// Every client connection as (shard, index), in start order.
    client_order: Vec<(usize, usize)>,
    client_ports: FxHashSet<(u8, u16)>,
    /// Ephemeral ports handed out, per protocol.
    ephemeral_used: FxHashMap<u8, u64>,
    /// The shard of each client socket, by (protocol, local port or echo id).
    port_shard: FxHashMap<(u8, u16), usize>,
    /// The shard of each accepted TCP connection, by its tuple.
    connection_shard: FxHashMap<TagKey, usize>,
    /// The shard the first fragment of a datagram went to, by IP identification.
    fragment_shard: FxHashMap<u16, usize>,
    /// Received IP packets and the shard each goes to, until the next poll.
    pending: VecDeque<(usize, Vec<u8>)>,
    /// Shards with new clients, to poll at the next poll.
    dirty: Vec<usize>,
    /// When each shard next needs to run.
    wakeups: std::collections::BTreeSet<(Instant, usize)>,
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

/// A TCP socket with `buffer` bytes of buffer each way.
/// Nagle's algorithm is off (TCP_NODELAY), as the applications netsim stands in for
/// set it: HTTP clients (curl, Go's net/http) and servers (nginx `tcp_nodelay on`)
/// send a message's last, short segment at once rather than after the first ACK.
fn new_tcp_socket(buffer: usize) -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; buffer]),
        tcp::SocketBuffer::new(vec![0; buffer]),
    );
    socket.set_nagle_enabled(false);
    socket
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
        let _ = iface.routes_mut().add_default_ipv4_route(nic.gateway_ip);
        Stack {
            nic,
            iface,
            device,
            shards: vec![Shard::new()],
            tcp_listen: Vec::new(),
            udp_listen: Vec::new(),
            tcp_applications: BTreeMap::new(),
            udp_applications: BTreeMap::new(),
            client_order: Vec::new(),
            client_ports: FxHashSet::default(),
            ephemeral_used: FxHashMap::default(),
            port_shard: FxHashMap::default(),
            connection_shard: FxHashMap::default(),
            fragment_shard: FxHashMap::default(),
            pending: VecDeque::new(),
            dirty: Vec::new(),
            wakeups: std::collections::BTreeSet::new(),
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

    /// A free local port from `ip_local_port_range`, or None when every one is taken
    /// (connect fails with EADDRNOTAVAIL; ports are not reused within a run, as
    /// TIME-WAIT would keep them toward the same destination).
    fn ephemeral_port(&mut self, protocol: u8) -> Option<u16> {
        let span = u64::from(EPHEMERAL_PORTS.end - EPHEMERAL_PORTS.start);
        let used = self.ephemeral_used.entry(protocol).or_insert(0);
        if *used >= span {
            return None;
        }
        *used += 1;
        loop {
            let port =
                EPHEMERAL_PORTS.start + u16::try_from(self.next_random() % span).unwrap_or(0);
            if self.client_ports.insert((protocol, port)) {
                return Some(port);
            }
        }
    }

    /// Opens a listening port (named `name` on a pod, if it is): a server that
    /// answers each request with its application's response.
    pub fn listen(&mut self, protocol: Protocol, port: u16, name: Option<&str>) {
        self.listen_with(protocol, port, Application::for_port(protocol, port, name));
    }

    /// Opens a listening port served by `application`.
    pub fn listen_with(&mut self, protocol: Protocol, port: u16, application: Application) {
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

    /// The shard new connections go to: the last one, or a new one when it is full.
    fn open_shard(&mut self) -> usize {
        let full = self
            .shards
            .last()
            .is_none_or(|shard| shard.opened >= SHARD_SOCKETS);
        if full {
            self.shards.push(Shard::new());
        }
        self.shards.len() - 1
    }

    /// The buffer size of a new TCP socket: small once the stack holds many
    /// connections.
    fn tcp_buffer(&self, connections: u32) -> usize {
        if self.shards.len() > 1 || connections as usize > SHARD_SOCKETS {
            TCP_BUFFER_CROWDED
        } else {
            TCP_BUFFER
        }
    }

    /// Which shard a received packet belongs to: an accepted connection's, a
    /// client's (by local port), a fresh listener's for a SYN to a listening port,
    /// else the first (a UDP server, echo requests, segments nothing expects).
    fn shard_for(&mut self, meta: &crate::packet::Meta, frame: &[u8]) -> usize {
        let identification = u16::from_be_bytes([frame[18], frame[19]]);
        if meta.is_later_fragment {
            return self
                .fragment_shard
                .get(&identification)
                .copied()
                .unwrap_or(0);
        }
        let key = meta.key;
        let protocol = key.protocol;
        let tuple = (protocol, key.destination_port, key.source, key.source_port);
        let local = match meta.icmp {
            IcmpKind::Error { .. } => None,
            _ => Some((protocol, key.destination_port)),
        };
        let shard = if let Some(&shard) = self.connection_shard.get(&tuple) {
            shard
        } else if let Some(&shard) = local.and_then(|local| self.port_shard.get(&local)) {
            shard
        } else if protocol == PROTOCOL_TCP
            && meta.tcp_flags & crate::packet::tcp_flags::SYN != 0
            && meta.tcp_flags & crate::packet::tcp_flags::ACK == 0
            && self.tcp_listen.contains(&key.destination_port)
        {
            let shard = self.open_shard();
            self.connection_shard.insert(tuple, shard);
            shard
        } else {
            0
        };
        if crate::engine::reassembly::is_fragment(frame) {
            self.fragment_shard.insert(identification, shard);
        }
        shard
    }

    /// A server socket for a listening port, made when traffic for it arrives: a
    /// listening TCP socket for a SYN when none listens in the connection's shard,
    /// the UDP socket (in the first shard) for a datagram.
    fn open_server_socket(&mut self, shard: usize, protocol: u8, port: u16, tcp_flags: u8) {
        match protocol {
            PROTOCOL_TCP
                if tcp_flags & crate::packet::tcp_flags::SYN != 0
                    && tcp_flags & crate::packet::tcp_flags::ACK == 0
                    && self.tcp_listen.contains(&port) =>
            {
                let buffer = self.tcp_buffer(0);
                let target = &mut self.shards[shard];
                let sockets = &target.sockets;
                let listening = target.tcp_listeners.get(&port).is_some_and(|handles| {
                    handles
                        .iter()
                        .any(|handle| sockets.get::<tcp::Socket>(*handle).is_listening())
                });
                if !listening {
                    let mut socket = new_tcp_socket(buffer);
                    let _ = socket.listen(port);
                    let handle = target.sockets.add(socket);
                    target.opened += 1;
                    target.tcp_listeners.entry(port).or_default().push(handle);
                }
            }
            PROTOCOL_UDP => {
                if let Some(&application) = self.udp_applications.get(&port) {
                    let first = &mut self.shards[0];
                    if !first.udp_servers.iter().any(|(_, _, p)| *p == port) {
                        let mut socket = new_udp_socket();
                        let _ = socket.bind(port);
                        let handle = first.sockets.add(socket);
                        first.opened += 1;
                        first.udp_servers.push((handle, application, port));
                    }
                }
            }
            _ => {}
        }
    }

    /// Adds a client socket to the open shard; returns (shard, handle).
    fn add_client_socket(
        &mut self,
        socket: impl smoltcp::socket::AnySocket<'static>,
        local: (u8, u16),
    ) -> (usize, SocketHandle) {
        let shard = self.open_shard();
        let target = &mut self.shards[shard];
        let handle = target.sockets.add(socket);
        target.opened += 1;
        self.port_shard.insert(local, shard);
        if !self.dirty.contains(&shard) {
            self.dirty.push(shard);
        }
        (shard, handle)
    }

    /// Records a new client of `shard`.
    fn push_client(&mut self, shard: usize, client: Client) {
        let clients = &mut self.shards[shard].clients;
        self.client_order.push((shard, clients.len()));
        clients.push(client);
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
        let protocol = match flow.protocol {
            Protocol::Tcp => PROTOCOL_TCP,
            Protocol::Udp => PROTOCOL_UDP,
            Protocol::Icmp => PROTOCOL_ICMP,
        };
        let Some(local_port) = self.ephemeral_port(protocol) else {
            // connect() / bind() fails before any packet: EADDRNOTAVAIL.
            self.report(
                tag,
                "connect: EADDRNOTAVAIL (cannot assign requested address: every port of \
                 ip_local_port_range 32768-60999 is in use)"
                    .into(),
            );
            let status = ConnectionStatus {
                failed: true,
                failure: Some("EADDRNOTAVAIL"),
                ..ConnectionStatus::default()
            };
            let shard = self.shards.len() - 1;
            self.push_client(shard, Client::Unconnected { flow: tag, status });
            return;
        };
        match (flow.protocol, flow.exchange) {
            (Protocol::Tcp, _) => {
                let mut socket = new_tcp_socket(self.tcp_buffer(flow.connections));
                socket.set_timeout(Some(TCP_TIMEOUT));
                let remote = IpEndpoint::new(IpAddress::Ipv4(remote_ip), flow.destination_port);
                let connected = socket
                    .connect(self.iface.context(), remote, local_port)
                    .is_ok();
                let (shard, handle) = self.add_client_socket(socket, (PROTOCOL_TCP, local_port));
                self.tags.insert(
                    (PROTOCOL_TCP, local_port, remote_ip, flow.destination_port),
                    tag,
                );
                let status = ConnectionStatus {
                    failed: !connected,
                    local_port,
                    ..ConnectionStatus::default()
                };
                self.push_client(
                    shard,
                    Client::Tcp(TcpClient {
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
                    }),
                );
            }
            (Protocol::Udp, _) => {
                let mut socket = new_udp_socket();
                let _ = socket.bind(local_port);
                let (shard, handle) = self.add_client_socket(socket, (PROTOCOL_UDP, local_port));
                self.tags.insert(
                    (PROTOCOL_UDP, local_port, remote_ip, flow.destination_port),
                    tag,
                );
                let remote = IpEndpoint::new(IpAddress::Ipv4(remote_ip), flow.destination_port);
                self.push_client(
                    shard,
                    Client::Udp(UdpClient {
                        flow: tag,
                        handle,
                        local_port,
                        dont_fragment: flow.dont_fragment,
                        remote,
                        messages,
                        sent_requests: 0,
                        exchanges: Exchanges::new(flow.requests, local_port),
                    }),
                );
            }
            (Protocol::Icmp, Exchange::Ping | Exchange::RequestResponse) => {
                let identifier = local_port;
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
                let (shard, handle) = self.add_client_socket(socket, (PROTOCOL_ICMP, identifier));
                self.tags
                    .insert((PROTOCOL_ICMP, identifier, remote_ip, identifier), tag);
                self.push_client(
                    shard,
                    Client::Ping(PingClient {
                        flow: tag,
                        handle,
                        dont_fragment: flow.dont_fragment,
                        remote: remote_ip,
                        identifier,
                        sequence: 0,
                        bytes,
                        exchanges: Exchanges::new(flow.requests, identifier),
                    }),
                );
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
        let shard = self.shard_for(&meta, frame);
        if !meta.is_later_fragment {
            self.open_server_socket(shard, key.protocol, key.destination_port, meta.tcp_flags);
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
        self.pending
            .push_back((shard, frame[ETHERNET_HEADER_LEN..].to_vec()));
        arrival
    }

    /// Runs the stack and its applications at `now`: each received packet in its
    /// shard, then every shard with new clients or a timer due. Returns the frames
    /// it sends.
    pub fn poll(&mut self, now: Instant, flows: &[Flow]) -> Vec<Departure> {
        while let Some((shard, packet)) = self.pending.pop_front() {
            self.device.rx.push_back(packet);
            self.poll_shard(shard, now, flows);
        }
        let mut due = std::mem::take(&mut self.dirty);
        while let Some(&(at, shard)) = self.wakeups.first() {
            if at > now {
                break;
            }
            self.wakeups.pop_first();
            self.shards[shard].scheduled = None;
            due.push(shard);
        }
        due.sort_unstable();
        due.dedup();
        for shard in due {
            self.poll_shard(shard, now, flows);
        }
        let packets = std::mem::take(&mut self.device.tx);
        packets
            .into_iter()
            .filter(|ip_packet| ip_packet.len() >= 20)
            .map(|ip_packet| self.frame(ip_packet, flows))
            .collect()
    }

    /// Runs one shard's sockets and applications until they settle, then books its
    /// next timer.
    fn poll_shard(&mut self, shard: usize, now: Instant, flows: &[Flow]) {
        for _ in 0..64 {
            self.iface
                .poll(now, &mut self.device, &mut self.shards[shard].sockets);
            self.replace_used_listeners(shard);
            let progressed = self.run_applications(shard, now, flows);
            if !progressed && self.device.rx.is_empty() {
                break;
            }
        }
        self.iface
            .poll(now, &mut self.device, &mut self.shards[shard].sockets);
        self.reschedule(shard, now);
    }

    /// Books when `shard` next needs to run (a socket timer or a client's wait).
    fn reschedule(&mut self, shard: usize, now: Instant) {
        let target = &mut self.shards[shard];
        if let Some(previous) = target.scheduled.take() {
            self.wakeups.remove(&(previous, shard));
        }
        let stack = self.iface.poll_at(now, &target.sockets);
        let applications = target.clients.iter().filter_map(|client| match client {
            Client::Udp(c) => c.exchanges.waiting_until,
            Client::Ping(c) => c.exchanges.waiting_until,
            Client::Tcp(_) | Client::Unconnected { .. } => None,
        });
        if let Some(next) = stack.into_iter().chain(applications).min() {
            target.scheduled = Some(next);
            self.wakeups.insert((next, shard));
        }
    }

    /// When the stack next needs to run (a timer), if ever.
    pub fn poll_at(&mut self, _now: Instant) -> Option<Instant> {
        self.wakeups.first().map(|(at, _)| *at)
    }

    /// Status of every client connection, by flow tag, in start order.
    pub fn client_status(&self) -> Vec<(FlowTag, ConnectionStatus)> {
        self.client_order
            .iter()
            .map(|&(shard, index)| match &self.shards[shard].clients[index] {
                Client::Tcp(c) => (c.flow, c.status),
                Client::Udp(c) => (c.flow, c.exchanges.status),
                Client::Ping(c) => (c.flow, c.exchanges.status),
                Client::Unconnected { flow, status } => (*flow, *status),
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
    fn replace_used_listeners(&mut self, shard: usize) {
        let target = &mut self.shards[shard];
        let mut used: Vec<(u16, SocketHandle)> = Vec::new();
        for (port, handles) in &mut target.tcp_listeners {
            let sockets = &target.sockets;
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
            target.tcp_servers.push(TcpServer {
                handle,
                application,
                request_len: None,
                received: Vec::new(),
                pending_response: Vec::new(),
            });
        }
    }

    fn run_applications(&mut self, shard: usize, now: Instant, flows: &[Flow]) -> bool {
        let mut progressed = false;
        for index in 0..self.shards[shard].tcp_servers.len() {
            progressed |= self.run_tcp_server(shard, index, flows);
        }
        for index in 0..self.shards[shard].udp_servers.len() {
            let (handle, application, _) = self.shards[shard].udp_servers[index];
            progressed |= self.run_udp_server(shard, handle, application);
        }
        let target = &mut self.shards[shard];
        for client in &mut target.clients {
            let mut local = ClientContext {
                sockets: &mut target.sockets,
                path_mtu: &self.path_mtu,
                reports: &mut self.reports,
                now,
            };
            progressed |= match client {
                Client::Tcp(c) => run_tcp_client(c, &mut local),
                Client::Udp(c) => run_udp_client(c, &mut local),
                Client::Ping(c) => run_ping_client(c, &mut local),
                Client::Unconnected { .. } => false,
            };
        }
        release_closed_sockets(target);
        progressed
    }

    fn run_tcp_server(&mut self, shard: usize, index: usize, flows: &[Flow]) -> bool {
        let target = &mut self.shards[shard];
        let handle = target.tcp_servers[index].handle;
        if target.tcp_servers[index].request_len.is_none() {
            let socket = target.sockets.get::<tcp::Socket>(handle);
            if let (Some(local), Some(remote)) = (socket.local_endpoint(), socket.remote_endpoint())
            {
                let IpAddress::Ipv4(remote_ip) = remote.addr;
                let tag = self
                    .tags
                    .get(&(PROTOCOL_TCP, local.port, remote_ip, remote.port))
                    .copied();
                let application = target.tcp_servers[index].application;
                let length = tag.and_then(|tag| flows.get(tag as usize)).map(|flow| {
                    let bytes = usize::try_from(flow.bytes).unwrap_or(1);
                    application
                        .request(Protocol::Tcp, &flow.name, bytes, 0)
                        .len()
                });
                target.tcp_servers[index].request_len = Some(length.unwrap_or(1).max(1));
            }
        }
        let local_ip = self.nic.ip;
        let server = &mut target.tcp_servers[index];
        let socket = target.sockets.get_mut::<tcp::Socket>(handle);
        let mut progressed = false;
        while socket.can_recv() {
            let received = &mut server.received;
            let read = socket.recv(|data| {
                received.extend_from_slice(data);
                (data.len(), data.len())
            });
            match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    progressed = true;
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

    fn run_udp_server(
        &mut self,
        shard: usize,
        handle: SocketHandle,
        application: Application,
    ) -> bool {
        let local_ip = self.nic.ip;
        let socket = self.shards[shard].sockets.get_mut::<udp::Socket>(handle);
        let mut progressed = false;
        while socket.can_recv() {
            let Ok((payload, metadata)) = socket.recv() else {
                break;
            };
            let request = payload.to_vec();
            let request = &request[..];
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

/// Gives back the buffers of connections that are over (closed, or in TIME-WAIT,
/// where Linux keeps only a small timewait socket without buffers), so memory
/// follows the connections open now, not every connection ever made.
fn release_closed_sockets(shard: &mut Shard) {
    let over = |state: tcp::State| matches!(state, tcp::State::Closed | tcp::State::TimeWait);
    let sockets = &mut shard.sockets;
    shard.tcp_servers.retain(|server| {
        let done = over(sockets.get::<tcp::Socket>(server.handle).state());
        if done {
            sockets.remove(server.handle);
        }
        !done
    });
    for client in &mut shard.clients {
        if let Client::Tcp(c) = client {
            let finished = c.status.completed || c.status.failed;
            if finished && !c.socket_released && over(sockets.get::<tcp::Socket>(c.handle).state())
            {
                sockets.remove(c.handle);
                c.socket_released = true;
            }
        }
    }
}
