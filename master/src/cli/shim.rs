//! TEMPORARY until the select branch is merged.
pub fn fold(names: &[String]) -> String {
    names.join(",")
}
pub fn write_failed(_: &[String]) -> std::io::Result<()> {
    Ok(())
}
