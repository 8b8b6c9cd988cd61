//! netsim: a userspace packet-path emulator for Kubernetes CNI networking.
pub mod packet;
pub mod wire;
