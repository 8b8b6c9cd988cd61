//! How a Linux endpoint reacts to ICMP errors about what it sent (`icmp_unreach` →
//! `tcp_v4_err` / `__udp4_lib_err` / `ping_err`; errno and "fatal" from
//! `icmp_err_convert` in net/ipv4/icmp.c): path MTU discovery, SYN-SENT aborted,
//! connected UDP refused.

use super::*;

/// An ICMP error as a Linux socket sees it (`icmp_err_convert` in net/ipv4/icmp.c
/// gives each destination-unreachable code an errno and whether it is "fatal").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IcmpError {
    /// Fragmentation needed, with a usable next-hop MTU (RFC 1191).
    FragmentationNeeded { mtu: u16 },
    /// A fatal error: protocol or port unreachable, unknown or prohibited destination.
    Hard,
    /// Net or host unreachable, time exceeded: a soft error.
    Soft,
}

/// The errno Linux gives an ICMP error (`icmp_err_convert`; time exceeded is
/// EHOSTUNREACH in `tcp_v4_err`).
pub(super) fn errno_name(icmp_type: u8, code: u8) -> &'static str {
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
    pub(super) fn classify(icmp_type: u8, code: u8, next_hop_mtu: u16) -> IcmpError {
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
pub(super) fn endpoint_is(endpoint: IpEndpoint, remote: (Ipv4Addr, u16)) -> bool {
    let IpAddress::Ipv4(address) = endpoint.addr;
    (address, endpoint.port) == remote
}

impl Stack {
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
    pub(super) fn react_to_icmp_error(&mut self, frame: &[u8], icmp_type: u8, code: u8) {
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
                let clients = self.shards.iter_mut().flat_map(|s| s.clients.iter_mut());
                for client in clients {
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
                let clients = self.shards.iter_mut().flat_map(|s| s.clients.iter_mut());
                for client in clients {
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
    pub(super) fn tcp_error(
        &mut self,
        local_port: u16,
        remote: (Ipv4Addr, u16),
        error: IcmpError,
        errno: &'static str,
        from: Ipv4Addr,
    ) {
        let matching: Vec<(usize, SocketHandle)> = self
            .shards
            .iter()
            .enumerate()
            .flat_map(|(shard, target)| {
                target
                    .sockets
                    .iter()
                    .filter_map(move |(handle, socket)| match socket {
                        smoltcp::socket::Socket::Tcp(tcp) => {
                            let local = tcp.local_endpoint()?;
                            let peer = tcp.remote_endpoint()?;
                            (local.port == local_port && endpoint_is(peer, remote))
                                .then_some((shard, handle))
                        }
                        _ => None,
                    })
            })
            .collect();
        for (shard, handle) in matching {
            let sockets = &mut self.shards[shard].sockets;
            match error {
                IcmpError::FragmentationNeeded { mtu } => {
                    let mss = usize::from(mtu).saturating_sub(40);
                    sockets.get_mut::<tcp::Socket>(handle).reduce_mss(mss);
                }
                IcmpError::Hard | IcmpError::Soft => {
                    let state = sockets.get::<tcp::Socket>(handle).state();
                    if matches!(state, tcp::State::SynSent | tcp::State::SynReceived) {
                        self.abort_quietly(
                            shard,
                            handle,
                            errno,
                            &format!("connect: {errno}, ICMP from {from}"),
                        );
                    }
                }
            }
        }
    }

    /// Ends a connection the way `tcp_done` does: the socket is gone, no reset is sent.
    pub(super) fn abort_quietly(
        &mut self,
        shard: usize,
        handle: SocketHandle,
        errno: &'static str,
        note: &str,
    ) {
        let mut aborted = Vec::new();
        let target = &mut self.shards[shard];
        for client in &mut target.clients {
            if let Client::Tcp(c) = client {
                if c.handle == handle && !c.status.completed {
                    c.status.failed = true;
                    c.status.failure = Some(errno);
                    c.socket_released = true;
                    aborted.push(c.flow);
                }
            }
        }
        target.tcp_servers.retain(|server| server.handle != handle);
        target.sockets.remove(handle);
        for flow in aborted {
            self.report(flow, note.to_string());
        }
    }
}
