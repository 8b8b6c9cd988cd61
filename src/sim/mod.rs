//! Simulation: the fabric of devices and links ([`network`]), the endpoints' real
//! TCP/IP stacks ([`endpoint`]) and the messages their applications exchange
//! ([`application`]), and the event-driven runner ([`runner`]) with its simulated
//! clock. Nothing here reads the wall clock.

pub mod application;
pub mod endpoint;
pub mod network;
pub mod path;
pub mod runner;
