import CPuna

/// Write to stdout at once (generation streams token by token).
func out(_ s: String) {
    var s = s
    s.withUTF8 { puna_write_stdout(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), Int64($0.count)) }
}

func outLine(_ s: String) { out(s + "\n") }

func errLine(_ s: String) {
    var s = s + "\n"
    s.withUTF8 { puna_write_stderr(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), Int64($0.count)) }
}

func outBytes(_ bytes: [UInt8]) {
    bytes.withUnsafeBytes { b in
        if let base = b.baseAddress { puna_write_stdout(base.assumingMemoryBound(to: CChar.self), Int64(b.count)) }
    }
}

func parseDouble(_ s: String) -> Double? {
    var v: Double = 0
    return puna_parse_double(s, &v) == 1 ? v : nil
}

/// Left-aligned table rows: "key   value".
func table(_ rows: [(String, String)]) -> String {
    let width = rows.reduce(0) { max($0, $1.0.count) } + 2
    var s = ""
    for (k, v) in rows { s += k + String(repeating: " ", count: width - k.count) + v + "\n" }
    return s
}
