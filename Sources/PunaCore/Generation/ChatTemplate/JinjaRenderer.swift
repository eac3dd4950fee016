/// Evaluates a parsed template: jinja2's semantics over `JinjaValue` (Python's str(), truthiness,
/// `+`, `in`, slicing, undefined values), with every loop, call and string bounded.
final class JinjaRenderer {
    enum Flow { case normal, breakLoop, continueLoop }

    let limits: JinjaLimits
    let now: JinjaDate
    let globals = JinjaScope(parent: nil)
    var buffers: [String] = [""]
    var iterations = 0
    var callDepth = 0
    var work = 0

    init(limits: JinjaLimits, now: JinjaDate) {
        self.limits = limits
        self.now = now
        for name in ["range", "namespace", "dict", "raise_exception", "strftime_now", "cycler", "joiner"] {
            globals.vars[name] = .callable(JinjaCallable(.builtin(name)))
        }
    }

    func error(_ line: Int, _ message: String) -> PunaError { PunaError("chat template line \(line): \(message)") }

    /// Count `units` of work (steps, or bytes and items walked) against the rendering's budget.
    func charge(_ units: Int, line: Int) throws(PunaError) {
        work += units
        if work > limits.maxWork {
            throw error(line, "the template does more than \(limits.maxWork) units of work (a runaway loop or recursion?)")
        }
    }

    /// The work of walking a value once: a string's bytes, a container's items.
    func charge(_ v: JinjaValue, line: Int) throws(PunaError) {
        switch v {
        case .string(let s), .markup(let s): try charge(s.utf8.count + 1, line: line)
        case .list(let l), .iterator(let l), .tuple(let l): try charge(l.count + 1, line: line)
        case .dict(let d): try charge(d.count + 1, line: line)
        default: try charge(1, line: line)
        }
    }

    func renderTemplate(_ nodes: [JinjaNode]) throws(PunaError) -> String {
        let root = JinjaScope(parent: globals)
        _ = try render(nodes, root)
        return buffers[0]
    }

    func emit(_ s: String, line: Int) throws(PunaError) {
        try charge(s.utf8.count + 1, line: line)
        buffers[buffers.count - 1] += s
        if buffers[buffers.count - 1].utf8.count > limits.maxOutputBytes {
            throw error(line, "output exceeds \(limits.maxOutputBytes) bytes")
        }
    }

    func capture(_ nodes: [JinjaNode], _ scope: JinjaScope) throws(PunaError) -> String {
        buffers.append("")
        defer { buffers.removeLast() }
        _ = try render(nodes, scope)
        return buffers[buffers.count - 1]
    }

    func checkSize(_ s: String, line: Int) throws(PunaError) -> JinjaValue {
        if s.utf8.count > limits.maxOutputBytes { throw error(line, "string exceeds \(limits.maxOutputBytes) bytes") }
        return .string(s)
    }

    // MARK: statements

    func render(_ nodes: [JinjaNode], _ scope: JinjaScope) throws(PunaError) -> Flow {
        for node in nodes {
            let flow = try render(node, scope)
            if flow != .normal { return flow }
        }
        return .normal
    }

    func render(_ node: JinjaNode, _ scope: JinjaScope) throws(PunaError) -> Flow {
        try charge(1, line: 0)
        switch node {
        case .text(let t):
            try emit(t, line: 0)
        case .output(let e, let line):
            let v = try eval(e, scope)
            if case .callable(let c) = v { throw error(line, "cannot print the function '\(c.name)'") }
            try emit(v.pythonStr, line: line)
        case .ifChain(let branches, let other):
            for (cond, body) in branches where try eval(cond, scope).truthy {
                return try render(body, scope)
            }
            return try render(other, scope)
        case .forLoop(let targets, let iterable, let condition, let body, let other, let line):
            var items = try iterate(try eval(iterable, scope), line: line)
            if let condition {
                var kept: [JinjaValue] = []
                for item in items {
                    let s = JinjaScope(parent: scope)
                    try bind(targets, item, s, line: line)
                    if try eval(condition, s).truthy { kept.append(item) }
                }
                items = kept
            }
            if items.isEmpty {
                _ = try render(other, JinjaScope(parent: scope))
                return .normal
            }
            for (i, item) in items.enumerated() {
                iterations += 1
                if iterations > limits.maxLoopIterations {
                    throw error(line, "for loop: more than \(limits.maxLoopIterations) iterations")
                }
                let s = JinjaScope(parent: scope)
                try bind(targets, item, s, line: line)
                var loop = JinjaDict()
                loop["index"] = .int(i + 1)
                loop["index0"] = .int(i)
                loop["revindex"] = .int(items.count - i)
                loop["revindex0"] = .int(items.count - i - 1)
                loop["first"] = .bool(i == 0)
                loop["last"] = .bool(i == items.count - 1)
                loop["length"] = .int(items.count)
                loop["depth"] = .int(1)
                loop["depth0"] = .int(0)
                loop["previtem"] = i > 0 ? items[i - 1] : .undefined(hint: "'loop.previtem' is undefined on the first iteration")
                loop["nextitem"] = i + 1 < items.count ? items[i + 1] : .undefined(hint: "'loop.nextitem' is undefined on the last iteration")
                loop["cycle"] = .callable(JinjaCallable(.loopCycle(index0: i)))
                s.vars["loop"] = .dict(loop)
                let flow = try render(body, s)
                if flow == .breakLoop { break }
            }
        case .set(let target, let e, let line):
            try assign(target, try eval(e, scope), scope, line: line)
        case .setBlock(let target, let body, let filters, let line):
            var v = JinjaValue.string(try capture(body, JinjaScope(parent: scope)))
            for f in filters { v = try applyFilter(f.name, v, try evalArgs(f.args, scope), try evalKwargs(f.kwargs, scope), scope, line: f.line) }
            try assign(target, v, scope, line: line)
        case .macro(let name, let params, let body):
            scope.vars[name] = .callable(JinjaCallable(.macro(JinjaMacro(name: name, params: params, body: body, scope: scope))))
        case .callBlock(let call, let params, let body, let line):
            guard case .call(let fn, let args, let kwargs, _) = call else { throw error(line, "'{% call %}' needs a macro call") }
            let callee = try eval(fn, scope)
            guard case .callable(let c) = callee, case .macro(let m) = c.kind else { throw error(line, "'{% call %}' needs a macro") }
            let caller = JinjaMacro(name: "caller", params: params, body: body, scope: scope)
            let v = try callMacro(m, try evalArgs(args, scope), try evalKwargs(kwargs, scope), caller: caller, line: line)
            try emit(v.pythonStr, line: line)
        case .filterBlock(let filters, let body):
            var v = JinjaValue.string(try capture(body, JinjaScope(parent: scope)))
            for f in filters { v = try applyFilter(f.name, v, try evalArgs(f.args, scope), try evalKwargs(f.kwargs, scope), scope, line: f.line) }
            try emit(v.pythonStr, line: filters.first?.line ?? 0)
        case .breakLoop:
            return .breakLoop
        case .continueLoop:
            return .continueLoop
        case .generation(let body):
            return try render(body, scope)
        }
        return .normal
    }

    func bind(_ targets: [String], _ item: JinjaValue, _ scope: JinjaScope, line: Int) throws(PunaError) {
        if targets.count == 1 { scope.vars[targets[0]] = item; return }
        let parts = try iterate(item, line: line)
        guard parts.count == targets.count else {
            throw error(line, "cannot unpack \(parts.count) values into \(targets.count) names")
        }
        for (t, p) in zip(targets, parts) { scope.vars[t] = p }
    }

    func assign(_ target: JinjaTarget, _ value: JinjaValue, _ scope: JinjaScope, line: Int) throws(PunaError) {
        switch target {
        case .names(let names): try bind(names, value, scope, line: line)
        case .attribute(let obj, let attr):
            guard case .namespace(let ns) = scope.lookup(obj) ?? .undefined(hint: "") else {
                throw error(line, "cannot assign attribute '\(attr)' on '\(obj)', which is not a namespace")
            }
            ns.dict[attr] = value
        }
    }

    /// The items a for loop (or `list`) walks: a list's elements, a dict's keys, a string's characters.
    func iterate(_ v: JinjaValue, line: Int) throws(PunaError) -> [JinjaValue] {
        try charge(v, line: line)
        switch v {
        case .list(let l), .iterator(let l), .tuple(let l): return l
        case .dict(let d): return d.keys
        case .string(let s): return s.unicodeScalars.map { .string(String(Character($0))) }
        case .undefined: return []
        case .namespace(let ns): return ns.dict.keys
        default: throw error(line, "'\(v.typeName)' object is not iterable")
        }
    }

    // MARK: expressions

    /// An expression's value; a Markup string reads as a plain string (only `+` tells them apart).
    func eval(_ e: JinjaExpr, _ scope: JinjaScope) throws(PunaError) -> JinjaValue {
        let v = try evalRaw(e, scope)
        if case .markup(let s) = v { return .string(s) }
        return v
    }

    func evalRaw(_ e: JinjaExpr, _ scope: JinjaScope) throws(PunaError) -> JinjaValue {
        try charge(1, line: 0)
        switch e {
        case .literal(let v): return v
        case .name(let n, _): return scope.lookup(n) ?? .undefined(hint: "'\(n)' is undefined")
        case .list(let items):
            var out: [JinjaValue] = []
            for i in items { out.append(try eval(i, scope)) }
            return .list(out)
        case .tuple(let items):
            var out: [JinjaValue] = []
            for i in items { out.append(try eval(i, scope)) }
            return .tuple(out)
        case .dict(let pairs, let line):
            var d = JinjaDict()
            for (k, v) in pairs {
                let key = try eval(k, scope)
                switch key {
                case .string, .int, .float, .bool, .none: break
                default: throw error(line, "unhashable type: '\(key.typeName)' as a dict key")
                }
                d[value: key] = try eval(v, scope)
            }
            return .dict(d)
        case .attr(let o, let name, let line):
            return try getAttr(try eval(o, scope), name, line: line)
        case .item(let o, let idx, let line):
            return try getItem(try eval(o, scope), try eval(idx, scope), line: line)
        case .slice(let o, let a, let b, let c, let line):
            let v = try eval(o, scope)
            let start = try a.map { (x) throws(PunaError) in try eval(x, scope) }
            let stop = try b.map { (x) throws(PunaError) in try eval(x, scope) }
            let step = try c.map { (x) throws(PunaError) in try eval(x, scope) }
            return try slice(v, start, stop, step, line: line)
        case .call(let fn, let args, let kwargs, let line):
            let a = try evalArgs(args, scope), k = try evalKwargs(kwargs, scope)
            if case .attr(let objExpr, let name, _) = fn {
                let obj = try eval(objExpr, scope)
                switch obj {
                case .string, .list, .tuple, .dict:
                    return try callMethod(obj, name, a, k, line: line)
                case .undefined(let hint): throw error(line, "\(hint) (calling '\(name)')")
                case .callable(let c):
                    // cycler objects: next(), reset(); a cycler itself is not callable.
                    if case .cycler(let items) = c.kind {
                        if name == "reset" { c.state = 0; return .none }
                        if name == "next" {
                            guard !items.isEmpty else { return .none }
                            let v = items[c.state % items.count]
                            c.state += 1
                            return v
                        }
                    }
                    throw error(line, "unsupported method '\(c.name).\(name)()'")
                default:
                    return try call(try getAttr(obj, name, line: line), a, k, line: line, what: name)
                }
            }
            return try call(try eval(fn, scope), a, k, line: line, what: describeCallee(fn))
        case .filter(let o, let name, let args, let kwargs, let line):
            let v = try eval(o, scope)
            return try applyFilter(name, v, try evalArgs(args, scope), try evalKwargs(kwargs, scope), scope, line: line)
        case .test(let o, let name, let args, let negated, let line):
            let r = try applyTest(name, try eval(o, scope), try evalArgs(args, scope), line: line)
            return .bool(negated ? !r : r)
        case .unary(let op, let o, let line):
            let v = try eval(o, scope)
            switch op {
            case "not": return .bool(!v.truthy)
            case "-":
                switch v {
                case .int(let i): return .int(-i)
                case .bool(let b): return .int(b ? -1 : 0)
                case .float(let d): return .float(-d)
                default: throw error(line, "bad operand type for unary -: '\(v.typeName)'")
                }
            default:
                guard v.numeric != nil else { throw error(line, "bad operand type for unary +: '\(v.typeName)'") }
                return v
            }
        case .binary(let op, let a, let b, let line):
            if op == "+" {
                let x = try evalRaw(a, scope), y = try evalRaw(b, scope)
                switch (x, y) {
                case (.markup(let p), .markup(let q)): return .markup(p + q)
                case (.markup(let p), .string(let q)): return .markup(p + htmlEscape(q))
                case (.string(let p), .markup(let q)): return .markup(htmlEscape(p) + q)
                default:
                    func plain(_ v: JinjaValue) -> JinjaValue { if case .markup(let s) = v { return .string(s) }; return v }
                    return try binary(op, plain(x), plain(y), line: line)
                }
            }
            return try binary(op, try eval(a, scope), try eval(b, scope), line: line)
        case .and(let a, let b):
            let l = try eval(a, scope)
            return l.truthy ? try eval(b, scope) : l
        case .or(let a, let b):
            let l = try eval(a, scope)
            return l.truthy ? l : try eval(b, scope)
        case .conditional(let t, let c, let o):
            if try eval(c, scope).truthy { return try eval(t, scope) }
            if let o { return try eval(o, scope) }
            return .undefined(hint: "the conditional expression's else value is undefined")
        }
    }

    func describeCallee(_ e: JinjaExpr) -> String {
        switch e {
        case .name(let n, _): return n
        case .attr(_, let n, _): return n
        default: return "expression"
        }
    }

    func evalArgs(_ args: [JinjaExpr], _ scope: JinjaScope) throws(PunaError) -> [JinjaValue] {
        var out: [JinjaValue] = []
        for a in args { out.append(try eval(a, scope)) }
        return out
    }

    func evalKwargs(_ kwargs: [(String, JinjaExpr)], _ scope: JinjaScope) throws(PunaError) -> [(String, JinjaValue)] {
        var out: [(String, JinjaValue)] = []
        for (k, e) in kwargs { out.append((k, try eval(e, scope))) }
        return out
    }

    func getAttr(_ v: JinjaValue, _ name: String, line: Int) throws(PunaError) -> JinjaValue {
        switch v {
        case .undefined(let hint): throw error(line, "\(hint) (reading '.\(name)')")
        case .dict(let d): return d[name] ?? .undefined(hint: "'dict object' has no attribute '\(name)'")
        case .namespace(let ns): return ns.dict[name] ?? .undefined(hint: "'Namespace' has no attribute '\(name)'")
        default: return .undefined(hint: "'\(v.typeName) object' has no attribute '\(name)'")
        }
    }

    func getItem(_ v: JinjaValue, _ idx: JinjaValue, line: Int) throws(PunaError) -> JinjaValue {
        if case .string = v { try charge(v, line: line) }
        if case .dict = v { try charge(v, line: line) }
        switch (v, idx) {
        case (.undefined(let hint), _): throw error(line, "\(hint) (reading an item)")
        case (.dict(let d), _): return d[value: idx] ?? .undefined(hint: "'dict object' has no attribute \(idx.pythonRepr)")
        case (.namespace(let ns), .string(let k)): return ns.dict[k] ?? .undefined(hint: "'Namespace' has no attribute '\(k)'")
        case (.list(let l), .int(let i)), (.tuple(let l), .int(let i)):
            let j = i < 0 ? l.count + i : i
            return j >= 0 && j < l.count ? l[j] : .undefined(hint: "list index \(i) out of range")
        case (.string(let s), .int(let i)):
            let u = Array(s.unicodeScalars)
            let j = i < 0 ? u.count + i : i
            return j >= 0 && j < u.count ? .string(String(Character(u[j]))) : .undefined(hint: "string index \(i) out of range")
        default: return .undefined(hint: "'\(v.typeName) object' has no item \(idx.pythonRepr)")
        }
    }

    func slice(_ v: JinjaValue, _ a: JinjaValue?, _ b: JinjaValue?, _ c: JinjaValue?, line: Int) throws(PunaError) -> JinjaValue {
        try charge(v, line: line)
        func intOrNil(_ x: JinjaValue?) throws(PunaError) -> Int? {
            guard let x else { return nil }
            switch x {
            case .none: return nil
            case .int(let i): return i
            case .bool(let b): return b ? 1 : 0
            default: throw error(line, "slice indices must be integers or None, not '\(x.typeName)'")
            }
        }
        let step = try intOrNil(c) ?? 1
        if step == 0 { throw error(line, "slice step cannot be zero") }
        func indices(_ count: Int) throws(PunaError) -> [Int] {
            func clamp(_ x: Int?, _ dflt: Int, lo: Int, hi: Int) -> Int {
                guard var x else { return dflt }
                if x < 0 { x += count }
                return min(max(x, lo), hi)
            }
            var out: [Int] = []
            if step > 0 {
                var i = clamp(try intOrNil(a), 0, lo: 0, hi: count)
                let end = clamp(try intOrNil(b), count, lo: 0, hi: count)
                while i < end { out.append(i); i += step }
            } else {
                var i = clamp(try intOrNil(a), count - 1, lo: -1, hi: count - 1)
                let end = clamp(try intOrNil(b), -1, lo: -1, hi: count - 1)
                while i > end { out.append(i); i += step }
            }
            return out
        }
        switch v {
        case .list(let l): return .list(try indices(l.count).map { l[$0] })
        case .tuple(let l): return .tuple(try indices(l.count).map { l[$0] })
        case .string(let s):
            let u = Array(s.unicodeScalars)
            var out = String.UnicodeScalarView()
            for i in try indices(u.count) { out.append(u[i]) }
            return .string(String(out))
        case .undefined(let hint): throw error(line, "\(hint) (slicing)")
        default: throw error(line, "'\(v.typeName)' object is not subscriptable")
        }
    }

    // MARK: operators

    func binary(_ op: String, _ a: JinjaValue, _ b: JinjaValue, line: Int) throws(PunaError) -> JinjaValue {
        try charge(a, line: line)
        try charge(b, line: line)
        switch op {
        case "~": return try checkSize(a.pythonStr + b.pythonStr, line: line)
        case "==": return .bool(equal(a, b))
        case "!=": return .bool(!equal(a, b))
        case "in", "not in":
            let r = try contains(b, a, line: line)
            return .bool(op == "in" ? r : !r)
        case "<", ">", "<=", ">=":
            let c = try compare(a, b, line: line, op: op)
            switch op {
            case "<": return .bool(c < 0)
            case ">": return .bool(c > 0)
            case "<=": return .bool(c <= 0)
            default: return .bool(c >= 0)
            }
        default: break
        }
        if case .undefined(let hint) = a { throw error(line, "\(hint) (operator '\(op)')") }
        if case .undefined(let hint) = b { throw error(line, "\(hint) (operator '\(op)')") }
        let fail = error(line, "unsupported operand type(s) for \(op): '\(a.typeName)' and '\(b.typeName)'")
        switch (a, b) {
        case (.string(let x), .string(let y)) where op == "+": return try checkSize(x + y, line: line)
        case (.tuple(let x), .tuple(let y)) where op == "+":
            if x.count + y.count > limits.maxListItems { throw error(line, "tuple longer than \(limits.maxListItems) items") }
            return .tuple(x + y)
        case (.list(let x), .list(let y)) where op == "+":
            if x.count + y.count > limits.maxListItems { throw error(line, "list longer than \(limits.maxListItems) items") }
            return .list(x + y)
        case (.string(let s), _) where op == "*", (_, .string(let s)) where op == "*":
            guard let n = (a.isIntLike ? a : b).intValue else { throw fail }
            if n > 0 && (s.utf8.count.multipliedReportingOverflow(by: n).overflow || s.utf8.count * n > limits.maxOutputBytes) {
                throw error(line, "string exceeds \(limits.maxOutputBytes) bytes")
            }
            if n > 0 { try charge(s.utf8.count * n, line: line) }
            return .string(n > 0 ? String(repeating: s, count: n) : "")
        case (.list(let l), _) where op == "*", (_, .list(let l)) where op == "*":
            guard let n = (a.isIntLike ? a : b).intValue else { throw fail }
            if n > 0 && l.count.multipliedReportingOverflow(by: n).overflow || (n > 0 && l.count * n > limits.maxListItems) {
                throw error(line, "list longer than \(limits.maxListItems) items")
            }
            if n > 0 { try charge(l.count * n, line: line) }
            var out: [JinjaValue] = []
            if n > 0 { for _ in 0..<n { out += l } }
            return .list(out)
        case (.string(let fmt), _) where op == "%":
            return .string(try percentFormat(fmt, b, line: line))
        default: break
        }
        if let x = a.intValue, let y = b.intValue, a.isIntLike, b.isIntLike {
            switch op {
            case "+": let (r, o) = x.addingReportingOverflow(y); if o { throw error(line, "integer overflow") }; return .int(r)
            case "-": let (r, o) = x.subtractingReportingOverflow(y); if o { throw error(line, "integer overflow") }; return .int(r)
            case "*": let (r, o) = x.multipliedReportingOverflow(by: y); if o { throw error(line, "integer overflow") }; return .int(r)
            case "/":
                if y == 0 { throw error(line, "division by zero") }
                return .float(Double(x) / Double(y))
            case "//", "%":
                if y == 0 { throw error(line, "integer division or modulo by zero") }
                var q = x / y
                if (x % y != 0) && ((x < 0) != (y < 0)) { q -= 1 }
                return op == "//" ? .int(q) : .int(x - q * y)
            case "**":
                if y < 0 { return .float(pow(Double(x), Double(y))) }
                var r = 1
                for _ in 0..<min(y, 64) {
                    let (m, o) = r.multipliedReportingOverflow(by: x)
                    if o { throw error(line, "integer overflow") }
                    r = m
                }
                if y > 64 && x != 0 && x != 1 && x != -1 { throw error(line, "integer overflow") }
                return .int(r)
            default: throw fail
            }
        }
        guard let x = a.numeric, let y = b.numeric else { throw fail }
        switch op {
        case "+": return .float(x + y)
        case "-": return .float(x - y)
        case "*": return .float(x * y)
        case "/":
            if y == 0 { throw error(line, "float division by zero") }
            return .float(x / y)
        case "//":
            if y == 0 { throw error(line, "float floor division by zero") }
            return .float((x / y).rounded(.down))
        case "%":
            if y == 0 { throw error(line, "float modulo") }
            let r = x - (x / y).rounded(.down) * y
            return .float(r)
        case "**": return .float(pow(x, y))
        default: throw fail
        }
    }

    func pow(_ x: Double, _ y: Double) -> Double {
        if y == y.rounded(), abs(y) < 1024 {
            var r = 1.0
            for _ in 0..<Int(abs(y)) { r *= x }
            return y < 0 ? 1 / r : r
        }
        return .nan
    }

    func equal(_ a: JinjaValue, _ b: JinjaValue) -> Bool {
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): return true
        case (.string(let x), .string(let y)): return x == y
        case (.list(let x), .list(let y)), (.tuple(let x), .tuple(let y)):
            guard x.count == y.count else { return false }
            for (p, q) in zip(x, y) where !equal(p, q) { return false }
            return true
        case (.dict(let x), .dict(let y)):
            guard x.count == y.count else { return false }
            for e in x.entries {
                guard let o = y[value: e.key], equal(e.value, o) else { return false }
            }
            return true
        case (.namespace(let x), .namespace(let y)): return x === y
        case (.callable(let x), .callable(let y)): return x === y
        default:
            if let x = a.numeric, let y = b.numeric { return x == y }
            return false
        }
    }

    func compare(_ a: JinjaValue, _ b: JinjaValue, line: Int, op: String) throws(PunaError) -> Int {
        switch (a, b) {
        case (.string(let x), .string(let y)):
            let xs = Array(x.unicodeScalars), ys = Array(y.unicodeScalars)
            for (p, q) in zip(xs, ys) where p != q { return p.value < q.value ? -1 : 1 }
            return xs.count == ys.count ? 0 : (xs.count < ys.count ? -1 : 1)
        case (.list(let x), .list(let y)), (.tuple(let x), .tuple(let y)):
            for (p, q) in zip(x, y) where !equal(p, q) { return try compare(p, q, line: line, op: op) }
            return x.count == y.count ? 0 : (x.count < y.count ? -1 : 1)
        default:
            if let x = a.numeric, let y = b.numeric { return x == y ? 0 : (x < y ? -1 : 1) }
            throw error(line, "'\(op)' not supported between instances of '\(a.typeName)' and '\(b.typeName)'")
        }
    }

    func contains(_ container: JinjaValue, _ item: JinjaValue, line: Int) throws(PunaError) -> Bool {
        switch container {
        case .string(let s):
            guard case .string(let sub) = item else {
                throw error(line, "'in <string>' requires string as left operand, not \(item.typeName)")
            }
            return sub.isEmpty || s.utf8Contains(sub)
        case .list(let l), .iterator(let l), .tuple(let l):
            for x in l where equal(x, item) { return true }
            return false
        case .dict(let d):
            return d[value: item] != nil
        case .undefined: return false
        default: throw error(line, "argument of type '\(container.typeName)' is not iterable")
        }
    }

    func percentFormat(_ fmt: String, _ arg: JinjaValue, line: Int) throws(PunaError) -> String {
        var args: [JinjaValue]
        if case .tuple(let l) = arg { args = l } else { args = [arg] }
        var out = ""
        var it = fmt.unicodeScalars.makeIterator()
        while let u = it.next() {
            guard u == "%" else { out.unicodeScalars.append(u); continue }
            guard let f = it.next() else { throw error(line, "incomplete format") }
            if f == "%" { out += "%"; continue }
            guard !args.isEmpty else { throw error(line, "not enough arguments for format string") }
            let v = args.removeFirst()
            switch f {
            case "s": out += v.pythonStr
            case "r": out += v.pythonRepr
            case "d", "i":
                guard let n = v.intValue ?? v.numeric.map({ Int($0) }) else { throw error(line, "%d format: a number is required") }
                out += String(n)
            default: throw error(line, "unsupported construct: '%\(Character(f))' string formatting")
            }
        }
        return out
    }

    // MARK: calls

    func call(_ callee: JinjaValue, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)], line: Int, what: String) throws(PunaError) -> JinjaValue {
        guard case .callable(let c) = callee else {
            if case .undefined(let hint) = callee { throw error(line, "\(hint) (called as a function)") }
            throw error(line, "'\(what)' is not callable ('\(callee.typeName)' object)")
        }
        switch c.kind {
        case .macro(let m): return try callMacro(m, args, kwargs, caller: nil, line: line)
        case .caller(let m): return try callMacro(m, args, kwargs, caller: nil, line: line)
        case .joiner(let sep):
            c.state += 1
            return .string(c.state == 1 ? "" : sep)
        case .cycler:
            throw error(line, "'Cycler' object is not callable (use .next())")
        case .loopCycle(let i):
            guard !args.isEmpty else { throw error(line, "no items for cycling given") }
            return args[i % args.count]
        case .builtin(let name):
            return try callBuiltin(name, args, kwargs, line: line)
        }
    }

    func callMacro(_ m: JinjaMacro, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)], caller: JinjaMacro?, line: Int) throws(PunaError) -> JinjaValue {
        try charge(1 + args.count, line: line)
        callDepth += 1
        defer { callDepth -= 1 }
        if callDepth > limits.maxCallDepth {
            throw error(line, "macro '\(m.name)': calls nested deeper than \(limits.maxCallDepth) (runaway recursion)")
        }
        if args.count > m.params.count {
            throw error(line, "macro '\(m.name)' takes not more than \(m.params.count) argument(s)")
        }
        let s = JinjaScope(parent: m.scope)
        for (i, p) in m.params.enumerated() {
            if i < args.count { s.vars[p.name] = args[i]; continue }
            var found = false
            for (k, v) in kwargs where k == p.name { s.vars[p.name] = v; found = true }
            if !found {
                if let d = p.defaultValue { s.vars[p.name] = try eval(d, s) }
                else { s.vars[p.name] = .undefined(hint: "parameter '\(p.name)' of macro '\(m.name)' was not given") }
            }
        }
        for (k, _) in kwargs where !m.params.contains(where: { $0.name == k }) {
            throw error(line, "macro '\(m.name)' takes no keyword argument '\(k)'")
        }
        if let caller { s.vars["caller"] = .callable(JinjaCallable(.caller(caller))) }
        return .string(try capture(m.body, s))
    }

    func kwarg(_ kwargs: [(String, JinjaValue)], _ name: String) -> JinjaValue? {
        for (k, v) in kwargs where k == name { return v }
        return nil
    }

    /// Positional argument `i`, else the keyword `name`.
    func arg(_ args: [JinjaValue], _ kwargs: [(String, JinjaValue)], _ i: Int, _ name: String) -> JinjaValue? {
        i < args.count ? args[i] : kwarg(kwargs, name)
    }

    func callBuiltin(_ name: String, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)], line: Int) throws(PunaError) -> JinjaValue {
        switch name {
        case "range":
            var ints: [Int] = []
            for a in args {
                guard let i = a.intValue, a.isIntLike else { throw error(line, "range() takes integers, not '\(a.typeName)'") }
                ints.append(i)
            }
            let (start, stop, step): (Int, Int, Int)
            switch ints.count {
            case 1: (start, stop, step) = (0, ints[0], 1)
            case 2: (start, stop, step) = (ints[0], ints[1], 1)
            case 3: (start, stop, step) = (ints[0], ints[1], ints[2])
            default: throw error(line, "range() takes 1 to 3 arguments")
            }
            if step == 0 { throw error(line, "range() step must not be zero") }
            let count = step > 0 ? (stop > start ? (stop - start + step - 1) / step : 0) : (start > stop ? (start - stop - step - 1) / -step : 0)
            if count > limits.maxRange { throw error(line, "range() of \(count) items is longer than the sandbox allows (\(limits.maxRange))") }
            try charge(count, line: line)
            var out: [JinjaValue] = []
            out.reserveCapacity(count)
            var v = start
            for _ in 0..<count { out.append(.int(v)); v += step }
            return .list(out)
        case "namespace", "dict":
            var d = JinjaDict()
            if let first = args.first {
                guard case .dict(let init0) = first else { throw error(line, "\(name)() takes a dict or keyword arguments") }
                d = init0
            }
            for (k, v) in kwargs { d[k] = v }
            if name == "dict" { return .dict(d) }
            let ns = JinjaNamespace()
            ns.dict = d
            return .namespace(ns)
        case "raise_exception":
            throw PunaError("chat template line \(line): raise_exception: \(args.first?.pythonStr ?? "")")
        case "strftime_now":
            guard case .string(let fmt) = args.first ?? .none else { throw error(line, "strftime_now() takes a format string") }
            return .string(try strftime(fmt, now, line: line))
        case "cycler":
            return .callable(JinjaCallable(.cycler(items: args)))
        case "joiner":
            let sep = arg(args, kwargs, 0, "sep")?.pythonStr ?? ", "
            return .callable(JinjaCallable(.joiner(separator: sep)))
        default:
            throw error(line, "unsupported function '\(name)'")
        }
    }

    func strftime(_ fmt: String, _ d: JinjaDate, line: Int) throws(PunaError) -> String {
        let months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]
        let days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
        func pad(_ v: Int, _ n: Int = 2) -> String {
            var s = String(v)
            while s.utf8.count < n { s = "0" + s }
            return s
        }
        // Day of the week (0 = Monday) and of the year.
        let mdays = [31, (d.year % 4 == 0 && (d.year % 100 != 0 || d.year % 400 == 0)) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        var yday = d.day
        for m in 0..<max(0, min(d.month - 1, 12)) { yday += mdays[m] }
        let y = d.month < 3 ? d.year - 1 : d.year
        let t = [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4]
        let sundayBased = (y + y / 4 - y / 100 + y / 400 + t[max(0, min(d.month - 1, 11))] + d.day) % 7
        let weekday = (sundayBased + 6) % 7
        let month = months[max(0, min(d.month - 1, 11))]
        var out = ""
        var it = fmt.unicodeScalars.makeIterator()
        while let u = it.next() {
            guard u == "%" else { out.unicodeScalars.append(u); continue }
            guard var f = it.next() else { out += "%"; break }
            var noPad = false
            if f == "-" { noPad = true; guard let g = it.next() else { break }; f = g }
            func num(_ v: Int, _ n: Int = 2) -> String { noPad ? String(v) : pad(v, n) }
            switch f {
            case "Y": out += String(d.year)
            case "y": out += num(d.year % 100)
            case "m": out += num(d.month)
            case "d": out += num(d.day)
            case "e": out += d.day < 10 ? " " + String(d.day) : String(d.day)
            case "H": out += num(d.hour)
            case "I": out += num(d.hour % 12 == 0 ? 12 : d.hour % 12)
            case "M": out += num(d.minute)
            case "S": out += num(d.second)
            case "p": out += d.hour < 12 ? "AM" : "PM"
            case "B": out += month
            case "b", "h": out += String(month.prefix(3))
            case "A": out += days[weekday]
            case "a": out += String(days[weekday].prefix(3))
            case "j": out += num(yday, 3)
            case "%": out += "%"
            default: throw error(line, "unsupported construct: strftime format '%\(Character(f))'")
            }
        }
        return out
    }
}

extension JinjaValue {
    var isIntLike: Bool {
        switch self {
        case .int, .bool: return true
        default: return false
        }
    }
    var intValue: Int? {
        switch self {
        case .int(let i): return i
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }
}

extension String {
    func utf8Contains(_ other: String) -> Bool { utf8Find(other, from: 0) != nil }

    /// Byte offset of the first occurrence of `other` at or after byte `from`.
    func utf8Find(_ other: String, from: Int) -> Int? {
        let h = Array(utf8), n = Array(other.utf8)
        if n.isEmpty { return from <= h.count ? from : nil }
        if n.count > h.count { return nil }
        var i = from
        while i + n.count <= h.count {
            if h[i] == n[0] {
                var j = 1
                while j < n.count && h[i + j] == n[j] { j += 1 }
                if j == n.count { return i }
            }
            i += 1
        }
        return nil
    }
}
