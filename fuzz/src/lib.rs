//! What the fuzz targets share: the request-head model and its invariants ([`head`]).

pub mod head;
