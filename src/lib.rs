//! netsim: a userspace packet-path emulator for Kubernetes CNI networking.
pub mod bench;
pub mod capture;
pub mod datapath;
pub mod engine;
pub mod output;
pub mod packet;
pub mod report;
pub mod sim;
pub mod topology;
pub mod trace;
pub mod wire;
