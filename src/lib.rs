//! Cairn: a FHIR R4 server for personalized care plans. A request flows
//! `http` → `auth` → `rest` → `store`, with `fhir` (types, parsing, validation) and `search` beside
//! them.

pub mod audit;
pub mod auth;
pub mod care;
pub mod config;
pub mod error;
pub mod fhir;
pub mod http;
pub mod metrics;
pub mod rest;
pub mod search;
pub mod store;
pub mod telemetry;
