//! Helpers the fuzz targets share: splitting a fuzz input into the parts a
//! target feeds to the code under test. Text formats rather than
//! `arbitrary` where the seeds are real documents, so the committed corpora
//! stay readable and can be written by hand.

/// Splits `data` at the first NUL: the part before, and the rest (empty
/// when there is no NUL).
pub fn split_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}
