fn main() -> anyhow::Result<()> {
    anyhow::bail!("kata-sriov: not implemented yet")
}
