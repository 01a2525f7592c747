use std::path::Path;
use std::time::Instant;
use dallinger_oci::experiment::config::Config;

#[test]
fn scratch_config() {
    // exponential interpolation: k0 = %(k1)s x4 ... k9 = x
    for depth in [4usize, 6, 8] {
        let mut text = String::from("[DEFAULT]\n");
        for i in 0..depth {
            text.push_str(&format!("k{i} = {}\n", format!("%(k{})s", i + 1).repeat(8)));
        }
        text.push_str(&format!("k{depth} = x\n[P]\n"));
        let t = Instant::now();
        let c = Config::parse(Path::new("c"), &text).unwrap();
        let total: usize = c.entries().iter().map(|e| e.value.len()).sum();
        eprintln!("depth {depth}: {} bytes in, {total} bytes out, {:?}", text.len(), t.elapsed());
    }
    // quadratic: defaults x sections
    for n in [1000usize, 2000, 4000] {
        let mut text = String::from("[DEFAULT]\n");
        for i in 0..n { text.push_str(&format!("d{i}=1\n")); }
        for i in 0..n { text.push_str(&format!("[s{i}]\n")); }
        let t = Instant::now();
        let c = Config::parse(Path::new("c"), &text).unwrap();
        eprintln!("n {n}: {} bytes in, {} entries, {:?}", text.len(), c.entries().len(), t.elapsed());
    }
    for n in [2000usize, 4000, 8000] {
        let mut text = String::from("[s]\n");
        for i in 0..n { text.push_str(&format!("d{i}=1\n")); }
        let t = Instant::now();
        let c = Config::parse(Path::new("c"), &text).unwrap();
        eprintln!("keys {n}: {} bytes in, {} entries, {:?}", text.len(), c.entries().len(), t.elapsed());
    }
    for n in [100_000usize, 200_000, 400_000] {
        let text = format!("[s]\nk = x\n{}", " y\n".repeat(n));
        let t = Instant::now();
        let c = Config::parse(Path::new("c"), &text).unwrap();
        eprintln!("cont {n}: {} bytes in, {} entries, {:?}", text.len(), c.entries().len(), t.elapsed());
    }
}
