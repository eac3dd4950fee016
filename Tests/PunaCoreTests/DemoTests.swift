import Foundation
import XCTest

/// The bundled demo (models/demo, made by scripts/train-demo/train_demo.py): the base must model
/// held-out fortunes far better than token frequencies do and write real words; the LoRA adapter
/// must make it answer in the Guanaco format; `puna run` / `puna chat` must find both without -m.
final class DemoTests: XCTestCase {
    static let demo = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("models/demo")
    static let base = demo.appendingPathComponent("fortune-llama-q8_0.gguf").path

    func metrics() throws -> [String: Any] { try Fixtures.json(DemoTests.demo.appendingPathComponent("metrics.json")) }

    /// Letter words as scripts/train-demo counts them for words.txt: letters with at most one
    /// inner apostrophe ("don't"), lower-cased.
    static func words(_ text: String) -> [String] {
        let regex = try! NSRegularExpression(pattern: "[A-Za-z]+(?:'[A-Za-z]+)?")
        return regex.matches(in: text, range: NSRange(text.startIndex..., in: text)).map {
            String(text[Range($0.range, in: text)!]).lowercased()
        }
    }

    /// (reply, finish reason from the timing line) of one `puna run`.
    func run(_ arguments: [String]) throws -> (String, String) {
        let (status, out, err) = try Fixtures.runPuna(["run"] + arguments)
        XCTAssertEqual(status, 0, err)
        let finish = err.range(of: #"stop: \w+"#, options: .regularExpression).map { String(err[$0].dropFirst(6)) } ?? "?"
        return (out.hasSuffix("\n") ? String(out.dropLast()) : out, finish)
    }

    /// The answer format (as scripts/train-demo measures it): a reply with at least one word that ends
    /// by itself, with end-of-sequence or the start of the next "### Human:" turn, within the 64-token
    /// budget instead of rambling on.
    static func followsFormat(_ reply: String, _ finish: String) -> Bool {
        (finish == "eos" || finish == "stop") && !words(reply).isEmpty
    }

    func testFilesAndSize() throws {
        // The files measured by the training script are the ones committed.
        let files = try XCTUnwrap(try metrics()["files"] as? [String: Int])
        for (name, size) in files {
            let attributes = try FileManager.default.attributesOfItem(atPath: DemoTests.demo.appendingPathComponent(name).path)
            XCTAssertEqual(attributes[.size] as? Int, size, name)
        }
        var total = 0
        let walker = try XCTUnwrap(FileManager.default.enumerator(at: DemoTests.demo, includingPropertiesForKeys: [.fileSizeKey]))
        for case let url as URL in walker { total += try url.resourceValues(forKeys: [.fileSizeKey]).fileSize ?? 0 }
        for name in ["fortune-llama-q8_0.gguf", "fortune-llama-q4_0.gguf", "fortune-llama-qa-lora.gguf",
                     "fortune-llama-qa-lora/adapter_config.json", "fortune-llama-qa-lora/adapter_model.safetensors",
                     "MODEL_CARD.md", "heldout.txt", "qa-heldout.jsonl", "words.txt"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: DemoTests.demo.appendingPathComponent(name).path), name)
        }
        XCTAssertLessThanOrEqual(total, 12_000_000, "models/demo must stay within 12 MB")
    }

    func testHeldOutPerplexityIsAtMostHalfTheUnigramBaseline() throws {
        let m = try metrics()
        let unigram = try XCTUnwrap(m["unigram_perplexity"] as? Double)
        let heldout = DemoTests.demo.appendingPathComponent("heldout.txt").path
        let (status, out, err) = try Fixtures.runPuna(["perplexity", "-m", DemoTests.base, "-f", heldout, "-c", "256", "--json"])
        XCTAssertEqual(status, 0, err)
        let result = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        let ppl = try XCTUnwrap(result["perplexity"] as? Double)
        XCTAssertEqual(result["scored_tokens"] as? Int, m["scored_tokens"] as? Int)
        XCTAssertLessThanOrEqual(ppl, unigram / 2, "held-out perplexity \(ppl) vs unigram baseline \(unigram)")
        // llama.cpp's llama-perplexity on the same file and context (recorded by the training script)
        // differs only by its 8-bit quantization of activations.
        let llama = try XCTUnwrap((m["llama_perplexity"] as? [String: Any])?["q8_0"] as? Double)
        XCTAssertEqual(ppl, llama, accuracy: 0.01 * llama)
    }

    func testGreedyTextIsReadableWords() throws {
        let vocabulary = Set(try String(contentsOf: DemoTests.demo.appendingPathComponent("words.txt"), encoding: .utf8)
            .split(separator: "\n").map(String.init))
        for prompt in ["The secret of a happy life is", "A computer is", "Never trust a man who"] {
            // No -m: `puna run` falls back to the demo base.
            let (text, _) = try run(["-p", prompt, "-n", "48", "--temp", "0"])
            XCTAssertFalse(text.contains("\u{FFFD}"), text)
            let words = DemoTests.words(text)
            XCTAssertGreaterThanOrEqual(words.count, 10, text)
            let known = words.filter { vocabulary.contains($0) }.count
            XCTAssertGreaterThanOrEqual(Double(known), 0.8 * Double(words.count), "\(prompt) -> \(text)")
            // Letters and spaces, not byte soup: most characters are ASCII letters or spaces.
            let letters = text.unicodeScalars.filter { $0.properties.isAlphabetic || $0 == " " }.count
            XCTAssertGreaterThanOrEqual(Double(letters), 0.8 * Double(text.unicodeScalars.count), text)
        }
    }

    func testAdapterAnswersHeldOutQuestionsInGuanacoFormat() throws {
        let lines = try String(contentsOf: DemoTests.demo.appendingPathComponent("qa-heldout.jsonl"), encoding: .utf8)
            .split(separator: "\n")
        let questions = try lines.map { line -> String in
            let pair = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            return try XCTUnwrap(pair["q"] as? String)
        }
        XCTAssertGreaterThanOrEqual(questions.count, 50)
        var followed = 0, failures: [String] = []
        for q in questions {
            let (reply, finish) = try run(["--lora", "demo", "--template", "guanaco", "-p", q, "-n", "64", "--temp", "0"])
            if DemoTests.followsFormat(reply, finish) { followed += 1 } else { failures.append("\(q) -> [\(finish)] \(reply)") }
        }
        XCTAssertGreaterThanOrEqual(Double(followed), 0.8 * Double(questions.count),
                                    "\(followed)/\(questions.count); failures:\n" + failures.joined(separator: "\n"))
        // The same prompts without the adapter: the base rambles on, so the adapter is what makes the format.
        var baseFollowed = 0
        for q in questions.prefix(10) {
            let (reply, finish) = try run(["--template", "guanaco", "-p", q, "-n", "64", "--temp", "0"])
            if DemoTests.followsFormat(reply, finish) { baseFollowed += 1 }
        }
        XCTAssertLessThanOrEqual(baseFollowed, 3)
    }

    func testChatWithoutModelUsesBaseAdapterAndGuanaco() throws {
        let question = "Tell me a fortune about computers."
        let (status, out, err) = try Fixtures.runPuna(["chat", "-n", "64", "--temp", "0"], stdin: question + "\n")
        XCTAssertEqual(status, 0, err)
        let (reply, _) = try run(["-m", DemoTests.base, "--lora", "demo", "--template", "guanaco", "-p", question,
                                  "-n", "64", "--temp", "0"])
        XCTAssertFalse(reply.isEmpty)
        XCTAssertEqual(out, reply + "\n")
    }

    /// README's first command, as written there (minus `swift build`), run with the test build's puna.
    func testReadmeQuickStartRunsTheDemo() throws {
        let readme = try String(contentsOf: DemoTests.demo.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("README.md"), encoding: .utf8)
        let line = try XCTUnwrap(readme.split(separator: "\n").first { $0.hasPrefix("swift build -c release && ") })
        let commands = line.components(separatedBy: " && ").dropFirst()
        XCTAssertEqual(commands.count, 2, String(line))
        var finishes: [String] = []
        for command in commands {
            let words = DemoTests.shellWords(command)
            XCTAssertEqual(words.first, ".build/release/puna", command)
            XCTAssertFalse(words.contains("-m"), "the quick start shows the default model: \(command)")
            let (status, out, err) = try Fixtures.runPuna(Array(words.dropFirst()))
            XCTAssertEqual(status, 0, err)
            XCTAssertGreaterThanOrEqual(DemoTests.words(out).count, 3, out)
            finishes.append(err.range(of: #"stop: \w+"#, options: .regularExpression).map { String(err[$0]) } ?? "")
        }
        // The base runs to the token limit; with the adapter the answer ends by itself.
        XCTAssertEqual(finishes, ["stop: length", "stop: eos"])
    }

    /// Words of a POSIX shell command line with plain '…' and "…" quoting (enough for README's lines).
    static func shellWords(_ line: String) -> [String] {
        var words: [String] = [], current = "", quote: Character? = nil, inWord = false
        for c in line {
            if let q = quote {
                if c == q { quote = nil } else { current.append(c) }
            } else if c == "'" || c == "\"" {
                quote = c
                inWord = true
            } else if c == " " {
                if inWord { words.append(current) }
                current = ""
                inWord = false
            } else {
                current.append(c)
                inWord = true
            }
        }
        if inWord { words.append(current) }
        return words
    }

    func testMissingDemoIsAClearError() throws {
        // A copy of the binary away from the checkout, run from an empty folder: nothing to find.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("puna-demo-missing-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let exe = dir.appendingPathComponent("puna")
        try FileManager.default.copyItem(at: Fixtures.punaBinary, to: exe)
        var (status, message) = try runDetached(exe, ["run", "-p", "Hello"], in: dir, demoDir: nil)
        XCTAssertEqual(status, 1)
        XCTAssertTrue(message.contains("fortune-llama-q8_0.gguf") && message.contains("-m FILE"), message)
        // PUNA_DEMO_DIR holding only the base: the run works, `--lora demo` names the missing adapter.
        let only = dir.appendingPathComponent("only-base")
        try FileManager.default.createDirectory(at: only, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: DemoTests.base, toPath: only.appendingPathComponent("fortune-llama-q8_0.gguf").path)
        (status, message) = try runDetached(exe, ["run", "-p", "Hello", "-n", "2"], in: dir, demoDir: only.path)
        XCTAssertEqual(status, 0, message)
        (status, message) = try runDetached(exe, ["run", "--lora", "demo", "-p", "Hello", "-n", "2"], in: dir, demoDir: only.path)
        XCTAssertEqual(status, 1)
        XCTAssertTrue(message.contains("fortune-llama-qa-lora.gguf"), message)
    }

    /// Run `exe` in `folder` with PUNA_DEMO_DIR set to `demoDir` (or unset); (status, stderr).
    func runDetached(_ exe: URL, _ arguments: [String], in folder: URL, demoDir: String?) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = exe
        p.arguments = arguments
        p.currentDirectoryURL = folder
        var env = ProcessInfo.processInfo.environment
        env["PUNA_DEMO_DIR"] = demoDir
        p.environment = env
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, message)
    }
}
