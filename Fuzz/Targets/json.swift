// JSONValue.parse on arbitrary bytes, every accessor on the result, and a round trip: the value
// written back as JSON (strings through JSONWriter's escaping, numbers as their literal text) must
// parse to an equal value.
import PunaCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    let value: JSONValue
    do throws(PunaError) {
        value = try JSONValue.parse(bytes: bytes)
    } catch {
        return 0
    }
    walk(value)
    var out: [UInt8] = []
    serialize(value, into: &out)
    let again: JSONValue
    do throws(PunaError) {
        again = try JSONValue.parse(bytes: out)
    } catch {
        fatalError("round trip: the written JSON does not parse (\(error.message)): \(String(decoding: out, as: UTF8.self))")
    }
    guard again == value else {
        fatalError("round trip: the written JSON parses to another value: \(String(decoding: out, as: UTF8.self))")
    }
    return 0
}

private func walk(_ v: JSONValue) {
    _ = v.isNull; _ = v.bool; _ = v.string; _ = v.double; _ = v.int; _ = v.uint64; _ = v.numberText; _ = v.keys
    _ = v[0]; _ = v[-1]; _ = v["id"]
    if let items = v.array { for item in items { walk(item) } }
    if let members = v.object { for m in members { _ = v[m.key]; walk(m.value) } }
}

private func serialize(_ v: JSONValue, into out: inout [UInt8]) {
    switch v {
    case .null: out += Array("null".utf8)
    case .bool(let b): out += Array((b ? "true" : "false").utf8)
    case .number(_, let text): out += Array(text.utf8)
    case .string(let s): out += quoted(s)
    case .array(let items):
        out.append(UInt8(ascii: "["))
        for (i, item) in items.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            serialize(item, into: &out)
        }
        out.append(UInt8(ascii: "]"))
    case .object(let members):
        out.append(UInt8(ascii: "{"))
        for (i, m) in members.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            out += quoted(m.key)
            out.append(UInt8(ascii: ":"))
            serialize(m.value, into: &out)
        }
        out.append(UInt8(ascii: "}"))
    }
}

private func quoted(_ s: String) -> [UInt8] {
    var w = JSONWriter()
    w.appendQuoted(s)
    return w.bytes
}
