//! full_proxy's modules as a library: the example's `main.rs`, the integration tests and the
//! load bench all use this one build of the gateway instead of compiling its source again each.
//!
//! It is the product, not the library: environment parsing (`config`), the admin API and page
//! (`admin`) and what the page shows over time (`views`), operations (`ops`), persistence wiring
//! (`persist`), following the shared state of a fleet (`fleet`) and the HTTP server (`server`)
//! live here, on top of `tower_gemini`'s layers. Run it with `cargo run --example full_proxy`.

pub mod accounts;
pub mod admin;
pub mod app;
pub mod config;
pub mod fleet;
pub mod ops;
pub mod persist;
pub mod server;
pub mod tokens_file;
pub mod views;
