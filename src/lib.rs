//! netsim: a userspace packet-path emulator for Kubernetes CNI networking as it runs
//! on VMware Tanzu / vSphere Kubernetes Service.
//!
//! A topology file is parsed and resolved once ([`topology`]); the control plane
//! ([`control`]) computes every router's routes before traffic; [`sim::network`] builds
//! the devices of [`datapath`] from it — nodes running Antrea, routers, segments — on
//! the generic mechanism of [`engine`] (LPM, conntrack, flow cache). [`sim::runner`]
//! moves real frames ([`packet`], [`wire`]) between them on a simulated clock, with
//! real TCP/UDP/ICMP endpoints ([`sim::endpoint`], smoltcp). What every hop did is
//! journaled and written as pcapng ([`capture`]), a report ([`report`]) or a trace
//! ([`trace`](mod@trace)); [`bench`](mod@bench) measures the same datapath.
//!
//! ```text
//!  topology ─▶ sim::network ─▶ sim::runner ─▶ capture / report / trace
//!                  │                │
//!                  ▼                ▼
//!              datapath  ◀──  packet / wire
//!                  │
//!                  ▼
//!               engine
//! ```

pub mod bench;
pub mod capture;
pub mod control;
pub mod datapath;
pub mod engine;
pub mod generate;
pub mod output;
pub mod packet;
pub mod report;
pub mod sim;
pub mod topology;
pub mod trace;
pub mod wire;
