//! p2pshare: a coordinator server and clients that distribute files among themselves in chunks.
//!
//! The protocol logic (codec, session state machines, scheduler) is sans-IO; the reactor shells
//! in `client` and `server` own the sockets, the memory maps and the clock.

pub mod auth;
pub mod bits;
pub mod bottleneck;
pub mod cli;
pub mod client;
pub mod client_core;
pub mod client_obs;
pub mod clock;
pub mod codec;
pub mod conn;
pub mod crypto;
pub mod datagen;
pub mod error;
pub mod frame;
pub mod geometry;
pub mod hashpool;
pub mod ids;
pub mod links;
pub mod logging;
pub mod md5x;
pub mod pacing;
pub mod progress;
pub mod redial;
pub mod report;
pub mod scheduler;
pub mod server;
pub mod server_core;
pub mod serving;
pub mod storage;
pub mod summary;
pub mod svg;
pub mod timeline;
