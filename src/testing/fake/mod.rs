//! The FakeGemini server: state, routing, answers and faults.
//!
//! - `server`: [`FakeGemini`], its builder, its shared state and the accept loop;
//! - `config`: how keys behave ([`KeyBehavior`]) and the scripted [`Fault`]s;
//! - `received`: the [`ReceivedRequest`]s it records;
//! - `routes`: one request: recorded, key-checked, then sent to its handler;
//! - `live`: the Live API's WebSocket (setup, text and audio turns, usage);
//! - `models` and `embed`: the models list and the embedding routes;
//! - `plan`: what a generate request is answered (the passage, a continuation, tools, usage);
//! - `generate`: that answer as steps, with the next fault applied;
//! - `emit`: steps on the wire (unary JSON, SSE or a streamed JSON array), and the cuts;
//! - `resources`: files, uploads, cached contents, batches and operations, each in one key's
//!   project;
//! - `response`: plain JSON answers and Gemini error bodies.

mod config;
mod embed;
mod emit;
mod generate;
mod live;
mod models;
mod plan;
mod received;
mod resources;
mod response;
mod routes;
mod server;

pub use config::{Fault, KeyBehavior};
pub use received::ReceivedRequest;
pub use server::{FakeGemini, FakeGeminiBuilder};
