//! The embedded eBPF object is a BPF ELF that carries BTF (so bpftool can
//! print map values by field name) and declares every map userspace uses.
use elb_common::maps;
use object::{Object, ObjectSection, ObjectSymbol};

fn object() -> object::File<'static> {
    object::File::parse(elb_userspace::EBPF_OBJECT).expect("embedded object is an ELF file")
}

#[test]
fn is_a_bpf_elf() {
    assert_eq!(object().architecture(), object::Architecture::Bpf);
}

#[test]
fn carries_btf_and_btf_ext() {
    let file = object();
    for name in [".BTF", ".BTF.ext"] {
        let section = file
            .section_by_name(name)
            .unwrap_or_else(|| panic!("no {name} section"));
        assert!(section.size() > 0, "{name} is empty");
    }
}

#[test]
fn declares_the_program_and_every_map() {
    let file = object();
    let symbols: Vec<_> = file.symbols().filter_map(|s| s.name().ok()).collect();
    assert!(symbols.contains(&maps::XDP_PROGRAM), "{symbols:?}");
    assert!(
        file.section_by_name(".maps").is_some(),
        "no BTF map section"
    );
    let btf = file
        .section_by_name(".BTF")
        .and_then(|s| s.data().ok())
        .expect(".BTF data");
    for map in maps::ALL {
        assert!(
            btf.windows(map.len()).any(|w| w == map.as_bytes()),
            "map {map} not named in BTF"
        );
    }
}
