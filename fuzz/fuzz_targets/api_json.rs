//! The pixiecore API's JSON answer → boot decision translation, against an HTTP and
//! a `file:///` API, including the object form of `cmdline` and relative URLs.
//! Never panics; an answer it accepts can be served as an iPXE script, and every
//! file that script names is one the answer lets ironpxe serve.
#![no_main]

use std::cell::RefCell;
use std::sync::OnceLock;

use ironpxe_api::{interpret_answer, Source};
use ironpxe_core::{BootDecision, ClientArch, MacAddr};
use libfuzzer_sys::fuzz_target;

fn sources() -> &'static [Source; 2] {
    static S: OnceLock<[Source; 2]> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::temp_dir().join("ironpxe-fuzz-api");
        std::fs::create_dir_all(dir.join("v1/boot")).unwrap();
        [
            Source::parse("http://api.example/pixie").unwrap(),
            Source::parse(&format!("file://{}", dir.display())).unwrap(),
        ]
    })
}

fuzz_target!(|body: &[u8]| {
    for source in sources() {
        let base = source.base();
        match interpret_answer(body, base) {
            Err(reason) => assert!(!reason.is_empty()),
            Ok((BootDecision::Script(_), files)) => assert!(files.is_empty()),
            Ok((BootDecision::Netboot(spec), files)) => {
                assert!(files.contains(&spec.kernel));
                assert!(spec.initrds.iter().all(|i| files.contains(i)));
                assert!(!spec.cmdline.contains(['\n', '\r']));
                let script = ironpxe_ipxe::boot_script(&ironpxe_ipxe::BootScript {
                    base_url: "http://10.0.0.2:8080",
                    mac: MacAddr([0x52, 0x54, 0, 0, 0, 1]),
                    arch: ClientArch::EfiX64,
                    spec: &spec,
                })
                .expect("an accepted answer renders");
                assert!(script.starts_with("#!ipxe\n"));
                let named = RefCell::new(Vec::new());
                ironpxe_core::template::render_cmdline(&spec.cmdline, &|id| {
                    named.borrow_mut().push(id.clone());
                    String::new()
                })
                .expect("an accepted cmdline expands");
                for id in named.into_inner() {
                    assert!(files.iter().any(|f| f.id() == id), "{id} is not served");
                }
            }
            Ok((other, _)) => panic!("an answer became {other:?}"),
        }
    }
});
