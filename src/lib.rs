//! netsim: a userspace packet-path emulator for Kubernetes CNI networking.
pub mod datapath;
pub mod engine;
pub mod packet;
pub mod topology;
pub mod wire;
