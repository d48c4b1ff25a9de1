//! The chaos harness: a Meridian whose control plane and region agents are processes of
//! their own (SIGKILLed, or drained, and started again on the same address and data; a
//! region with one agent or several instances), on a control plane
//! on the embedded store or on a real etcd that can be killed too, an in-process edge, a
//! link proxy that can black-hole, an open-loop load, and the accounting of every request
//! sent that each scenario ends with.

mod files;
mod load;
mod node;
mod proxy;
mod world;

pub use load::{Call, End, Load, Plan, Sent, Tally, follow, resend_unsettled, soak};
pub use node::Node;
pub use proxy::LinkProxy;
pub use world::{BREAKER_COOL_DOWN, InstanceDef, Store, World, WorldSpec};
