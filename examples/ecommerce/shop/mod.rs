//! The e-commerce system, one module per service. `main.rs` runs it as the
//! example; `tests/ecommerce.rs` includes this module to check it.

pub mod broker;
pub mod db;
pub mod edge;
pub mod fault_run;
pub mod gateway;
pub mod http_json;
pub mod invariants;
pub mod inventory;
pub mod notifications;
pub mod order_saga;
pub mod orders;
pub mod payments;
pub mod products;
pub mod proto;
pub mod registry;
pub mod scenario;
pub mod system;
pub mod users;
