/// A chat template (`tokenizer.chat_template`): a sandboxed subset of Jinja rendered the way
/// Hugging Face's `apply_chat_template` renders it (jinja2 with trim_blocks, lstrip_blocks, loop
/// controls, a JSON `tojson`, `raise_exception` and `strftime_now`, in an immutable sandbox).
/// Templates cannot read files or the environment; loops, recursion, nesting and output are bounded.
public struct JinjaLimits {
    /// Bytes of rendered text (and of any one string value) at most.
    public var maxOutputBytes = 4 << 20
    /// Loop iterations in one rendering, all loops together.
    public var maxLoopIterations = 1_000_000
    /// Macro calls nested at most this deep (recursive macros).
    public var maxCallDepth = 64
    /// Tags and expressions nested at most this deep in the source.
    public var maxNestingDepth = 100
    /// `range()` longer than this is refused (jinja2's sandbox allows 100 000 items).
    public var maxRange = 100_000
    /// Work units in one rendering: one per tag and expression evaluated, plus the bytes or items
    /// each string and list operation walks (the corpus of real templates needs thousands; long conversations a few million).
    public var maxWork = 20_000_000
    /// Items a list built by `*` or `+` may hold.
    public var maxListItems = 1_000_000
    /// Operands one chain of binary operators (`a + b + c …`) may have (its tree is walked recursively).
    public var maxOperatorChain = 1_000
    public init() {}
}

/// A calendar date and time for `strftime_now` (fixed in tests, the local time in the CLI).
public struct JinjaDate: Equatable {
    public var year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int
    public init(year: Int, month: Int, day: Int, hour: Int = 0, minute: Int = 0, second: Int = 0) {
        self.year = year; self.month = month; self.day = day; self.hour = hour; self.minute = minute; self.second = second
    }
}

public struct JinjaTemplate {
    let nodes: [JinjaNode]
    public let limits: JinjaLimits

    /// Parse a template. Syntax errors, unknown filters or tests and unsupported tags fail here,
    /// naming the construct and the line (jinja2 fails at compile time for the same).
    public init(_ source: String, limits: JinjaLimits = JinjaLimits()) throws(PunaError) {
        var lexer = JinjaLexer(source)
        let tokens = try lexer.tokenize()
        var parser = JinjaParser(tokens: tokens, maxDepth: limits.maxNestingDepth, maxChain: limits.maxOperatorChain)
        nodes = try parser.parseTemplate()
        self.limits = limits
        try JinjaTemplate.checkNames(nodes)
    }

    /// Render with the given variables (in addition to the built-in globals).
    public func render(_ variables: [(String, JinjaValue)], now: JinjaDate) throws(PunaError) -> String {
        let renderer = JinjaRenderer(limits: limits, now: now)
        for (k, v) in variables { renderer.globals.vars[k] = v }
        return try renderer.renderTemplate(nodes)
    }

    // MARK: compile-time checks

    /// jinja2 fails at compile time on an unknown filter or test, except inside an `if` (its test
    /// and body) or an inline `x if c else y`, where it fails only when reached ("soft" frames;
    /// loop, macro, call and filter bodies are hard again). The renderer checks at run time too.
    static func checkNames(_ nodes: [JinjaNode], soft: Bool = false) throws(PunaError) {
        for n in nodes { try checkNode(n, soft: soft) }
    }

    static func checkNode(_ n: JinjaNode, soft: Bool) throws(PunaError) {
        switch n {
        case .text, .breakLoop, .continueLoop: return
        case .output(let e, _): try checkExpr(e, soft: soft)
        case .ifChain(let branches, let other):
            for b in branches { try checkExpr(b.0, soft: true); try checkNames(b.1, soft: true) }
            try checkNames(other, soft: true)
        case .forLoop(_, let iterable, let cond, let body, let other, _):
            try checkExpr(iterable, soft: soft)
            if let cond { try checkExpr(cond, soft: false) }
            try checkNames(body); try checkNames(other)
        case .set(_, let e, _): try checkExpr(e, soft: soft)
        case .setBlock(_, let body, let filters, _):
            for f in filters { try checkFilter(f.name, line: f.line, soft: soft); for a in f.args { try checkExpr(a, soft: soft) } }
            try checkNames(body, soft: soft)
        case .macro(_, let params, let body):
            for p in params { if let d = p.defaultValue { try checkExpr(d, soft: false) } }
            try checkNames(body)
        case .callBlock(let e, _, let body, _): try checkExpr(e, soft: soft); try checkNames(body)
        case .filterBlock(let filters, let body):
            for f in filters { try checkFilter(f.name, line: f.line, soft: soft); for a in f.args { try checkExpr(a, soft: soft) } }
            try checkNames(body)
        case .generation(let body): try checkNames(body, soft: soft)
        }
    }

    static func checkFilter(_ name: String, line: Int, soft: Bool) throws(PunaError) {
        if !soft && !JinjaRenderer.filterNames.contains(name) {
            throw PunaError("chat template line \(line): unsupported filter '\(name)'")
        }
    }

    static func checkExpr(_ e: JinjaExpr, soft: Bool) throws(PunaError) {
        switch e {
        case .literal, .name: return
        case .list(let items), .tuple(let items): for i in items { try checkExpr(i, soft: soft) }
        case .dict(let pairs, _): for p in pairs { try checkExpr(p.0, soft: soft); try checkExpr(p.1, soft: soft) }
        case .attr(let o, _, _): try checkExpr(o, soft: soft)
        case .item(let o, let i, _): try checkExpr(o, soft: soft); try checkExpr(i, soft: soft)
        case .slice(let o, let a, let b, let c, _):
            try checkExpr(o, soft: soft)
            for x in [a, b, c] { if let x { try checkExpr(x, soft: soft) } }
        case .call(let f, let args, let kwargs, _):
            try checkExpr(f, soft: soft)
            for a in args { try checkExpr(a, soft: soft) }
            for k in kwargs { try checkExpr(k.1, soft: soft) }
        case .filter(let o, let name, let args, let kwargs, let line):
            try checkFilter(name, line: line, soft: soft)
            try checkExpr(o, soft: soft)
            for a in args { try checkExpr(a, soft: soft) }
            for k in kwargs { try checkExpr(k.1, soft: soft) }
        case .test(let o, let name, let args, _, let line):
            if !soft && !JinjaRenderer.testNames.contains(name) {
                throw PunaError("chat template line \(line): unsupported test '\(name)'")
            }
            try checkExpr(o, soft: soft)
            for a in args { try checkExpr(a, soft: soft) }
        case .unary(_, let o, _): try checkExpr(o, soft: soft)
        case .binary(_, let a, let b, _): try checkExpr(a, soft: soft); try checkExpr(b, soft: soft)
        case .and(let a, let b), .or(let a, let b): try checkExpr(a, soft: soft); try checkExpr(b, soft: soft)
        case .conditional(let t, let c, let o):
            try checkExpr(t, soft: true); try checkExpr(c, soft: true)
            if let o { try checkExpr(o, soft: true) }
        }
    }
}
