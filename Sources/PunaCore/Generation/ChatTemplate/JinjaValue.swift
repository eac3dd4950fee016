import CPuna

/// The values a chat template computes with: Python's types as jinja2 sees them. Lists and dicts are
/// values (the sandbox HF renders in forbids mutating them); a namespace, a macro and the helper
/// objects (cycler, joiner) are references because templates mutate or call them.
public indirect enum JinjaValue {
    /// A missing variable, attribute or item; `hint` names what was missing for error messages.
    case undefined(hint: String)
    case none
    case bool(Bool)
    case int(Int)
    case float(Double)
    case string(String)
    /// A Python list.
    case list([JinjaValue])
    /// A Python tuple: `(a, b)` literals, dict items, dictsort pairs. Like a list, but printed in
    /// parentheses and never equal to a list.
    case tuple([JinjaValue])
    /// A Python dict with string keys, members in insertion order.
    case dict(JinjaDict)
    case namespace(JinjaNamespace)
    case callable(JinjaCallable)
    /// A Python generator (what jinja2's map, select, reject, unique, reverse and items filters
    /// return): iterable once converted, but without len(), indexing or a JSON form.
    case iterator([JinjaValue])
    /// A string marked safe (`|safe`, markupsafe's Markup): `+` with a plain string HTML-escapes
    /// the plain one. Only `+` sees this case; everything else reads it as a string.
    case markup(String)

    /// A JSON document as the template sees it (numbers with a fraction or exponent are floats).
    public init(json: JSONValue) {
        switch json {
        case .null: self = .none
        case .bool(let b): self = .bool(b)
        case .number(let d, let text):
            var isInt = true
            for b in text.utf8 where b == UInt8(ascii: ".") || b == UInt8(ascii: "e") || b == UInt8(ascii: "E") { isInt = false }
            if isInt, let i = Int(text) { self = .int(i) } else { self = .float(d) }
        case .string(let s): self = .string(s)
        case .array(let items): self = .list(items.map { JinjaValue(json: $0) })
        case .object(let members):
            var d = JinjaDict()
            for m in members { d[m.key] = JinjaValue(json: m.value) }
            self = .dict(d)
        }
    }

    var isUndefined: Bool { if case .undefined = self { return true } else { return false } }
    var isNone: Bool { if case .none = self { return true } else { return false } }

    /// Python truthiness.
    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .float(let d): return d != 0
        case .string(let s), .markup(let s): return !s.isEmpty
        case .list(let l), .tuple(let l): return !l.isEmpty
        case .dict(let d): return d.count > 0
        case .namespace, .callable, .iterator: return true
        }
    }

    /// Python's type name, for error messages.
    var typeName: String {
        switch self {
        case .undefined: return "Undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .float: return "float"
        case .string: return "str"
        case .markup: return "Markup"
        case .list: return "list"
        case .tuple: return "tuple"
        case .dict: return "dict"
        case .namespace: return "Namespace"
        case .callable: return "function"
        case .iterator: return "generator"
        }
    }

    /// `str(value)` as jinja2 prints it (`{{ value }}`); undefined prints as nothing.
    var pythonStr: String {
        switch self {
        case .undefined: return ""
        case .string(let s), .markup(let s): return s
        default: return pythonRepr
        }
    }

    /// Python's `repr`, used inside printed lists and dicts.
    var pythonRepr: String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .float(let d): return pythonFloatRepr(d)
        case .string(let s): return pythonStringRepr(s)
        case .markup(let s): return "Markup(" + pythonStringRepr(s) + ")"
        case .tuple(let l):
            var out = "("
            for (i, v) in l.enumerated() { if i > 0 { out += ", " }; out += v.pythonRepr }
            return out + (l.count == 1 ? ",)" : ")")
        case .list(let l):
            var out = "["
            for (i, v) in l.enumerated() { if i > 0 { out += ", " }; out += v.pythonRepr }
            return out + "]"
        case .dict(let d):
            var out = "{"
            for (i, e) in d.entries.enumerated() {
                if i > 0 { out += ", " }
                out += e.key.pythonRepr + ": " + e.value.pythonRepr
            }
            return out + "}"
        case .namespace(let ns):
            var out = "<Namespace {"
            for (i, e) in ns.dict.entries.enumerated() {
                if i > 0 { out += ", " }
                out += e.key.pythonRepr + ": " + e.value.pythonRepr
            }
            return out + "}>"
        case .callable(let c): return "<function \(c.name)>"
        case .iterator: return "<generator object>"
        }
    }

    var numeric: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .float(let d): return d
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }
}

/// An insertion-ordered dict (templates' dicts are small: linear lookup). Keys are mostly strings;
/// numbers, booleans and None work as in Python (1 == 1.0 == True).
public struct JinjaDict {
    public private(set) var entries: [(key: JinjaValue, value: JinjaValue)] = []
    public init() {}
    public var count: Int { entries.count }
    public subscript(key: String) -> JinjaValue? {
        get { self[value: .string(key)] }
        set { self[value: .string(key)] = newValue }
    }
    public subscript(value key: JinjaValue) -> JinjaValue? {
        get {
            for e in entries where jinjaKeyEqual(e.key, key) { return e.value }
            return nil
        }
        set {
            for i in entries.indices where jinjaKeyEqual(entries[i].key, key) {
                if let newValue { entries[i].value = newValue } else { entries.remove(at: i) }
                return
            }
            if let newValue { entries.append((key, newValue)) }
        }
    }
    public var keys: [JinjaValue] { entries.map { $0.key } }
}

func jinjaKeyEqual(_ a: JinjaValue, _ b: JinjaValue) -> Bool {
    switch (a, b) {
    case (.string(let x), .string(let y)): return x == y
    case (.none, .none): return true
    default:
        if let x = a.numeric, let y = b.numeric { return x == y }
        return false
    }
}

public final class JinjaNamespace {
    var dict = JinjaDict()
    init() {}
}

/// Something a template can call: a built-in global, a macro, a cycler or joiner.
public final class JinjaCallable {
    enum Kind {
        case builtin(String)
        case macro(JinjaMacro)
        case joiner(separator: String)
        case cycler(items: [JinjaValue])
        case loopCycle(index0: Int)
        case caller(JinjaMacro)
    }
    let kind: Kind
    var state = 0
    init(_ kind: Kind) { self.kind = kind }
    var name: String {
        switch kind {
        case .builtin(let n): return n
        case .macro(let m), .caller(let m): return m.name
        case .joiner: return "joiner"
        case .cycler: return "cycler"
        case .loopCycle: return "loop.cycle"
        }
    }
}

final class JinjaMacro {
    let name: String
    let params: [(name: String, defaultValue: JinjaExpr?)]
    let body: [JinjaNode]
    let scope: JinjaScope
    init(name: String, params: [(name: String, defaultValue: JinjaExpr?)], body: [JinjaNode], scope: JinjaScope) {
        self.name = name; self.params = params; self.body = body; self.scope = scope
    }
}

/// A variable scope: the globals, the template's top level, each loop body and macro call.
final class JinjaScope {
    var vars: [String: JinjaValue] = [:]
    let parent: JinjaScope?
    init(parent: JinjaScope?) { self.parent = parent }
    func lookup(_ name: String) -> JinjaValue? {
        var s: JinjaScope? = self
        while let scope = s {
            if let v = scope.vars[name] { return v }
            s = scope.parent
        }
        return nil
    }
}

/// Python's `repr(float)`: the shortest text that reads back exactly, always with a fraction or exponent.
func pythonFloatRepr(_ d: Double) -> String {
    if d.isNaN { return "nan" }
    if d.isInfinite { return d < 0 ? "-inf" : "inf" }
    var s = d.description
    // Swift writes 1e-05 and 1e+16 like Python; whole numbers get ".0" in both.
    if s.hasSuffix(".0") == false {
        var hasMark = false
        for b in s.utf8 where b == UInt8(ascii: ".") || b == UInt8(ascii: "e") || b == UInt8(ascii: "n") || b == UInt8(ascii: "i") { hasMark = true }
        if !hasMark { s += ".0" }
    }
    return s
}

/// Python's `repr(str)`: single quotes unless the text holds a single quote and no double quote.
func pythonStringRepr(_ s: String) -> String {
    var hasSingle = false, hasDouble = false
    for b in s.utf8 {
        if b == UInt8(ascii: "'") { hasSingle = true }
        if b == UInt8(ascii: "\"") { hasDouble = true }
    }
    let quote: Unicode.Scalar = (hasSingle && !hasDouble) ? "\"" : "'"
    var out = String(Character(quote))
    for u in s.unicodeScalars {
        switch u {
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if u == quote { out += "\\" + String(Character(u)) }
            else if u.value < 0x20 || u.value == 0x7F { out += "\\x" + hex2(u.value) }
            else if u.value >= 0x80 && u.value < 0xA0 { out += "\\x" + hex2(u.value) }
            else { out.unicodeScalars.append(u) }
        }
    }
    out.unicodeScalars.append(quote)
    return out
}

func hex2(_ v: UInt32) -> String {
    let digits: [Character] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f"]
    return String(digits[Int((v >> 4) & 15)]) + String(digits[Int(v & 15)])
}

/// A decimal number as Python's float() reads it (strtod through CPuna: Embedded Swift has no
/// Double(String)).
func jinjaParseDouble(_ s: String) -> Double? {
    var value = 0.0
    return puna_parse_double(s, &value) == 1 ? value : nil
}
