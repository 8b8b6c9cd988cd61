//! Mechanism, no policy (opte's `engine/`): longest-prefix match, connection tracking
//! with NAT bindings, NAT pools, the one rule table every rule-based decision is
//! written on, the flow cache in front of every slow path, flow hashing, and IPv4
//! fragmentation and reassembly.
//! Nothing here knows about Kubernetes, Antrea or NSX; `datapath/` builds those on it.

pub mod conntrack;
pub mod flow_cache;
pub mod hash;
pub mod lpm;
pub mod nat;
pub mod reassembly;
pub mod rules;
