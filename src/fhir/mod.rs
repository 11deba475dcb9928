//! FHIR R4 knowledge that does not depend on storage or HTTP: which resource types are enabled, the id
//! syntax, strict parsing of request bodies (JSON and XML) and rendering of responses.

mod datetime;
mod format;
mod registry;
mod subset;
mod validate;

pub use datetime::{format_instant, parse_instant_range, DateRange};
pub use format::{check_resource, parse_json_body, parse_resource, render, Format};
pub use registry::{
    is_enabled, is_server_written, valid_id, ENABLED_TYPES, FHIR_VERSION, SERVER_WRITTEN,
};
pub use subset::{subset, Subset};
pub use validate::{element_info, validate_resource};
