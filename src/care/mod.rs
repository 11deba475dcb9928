//! Measurement-based care, as data and pure functions (no I/O): scored instruments
//! (`scoring`: the `questionnaire-scoring` extension), SDC observation-based extraction and the
//! safety signal (`extract`), goal progress and the progress view (`progress`), and the built-in
//! instruments (`instruments`). `rest::derive` stores what they decide, in the writing transaction.

pub mod extract;
pub mod instruments;
pub mod progress;
pub mod scoring;
