package dev.fraqat.deploy.core.test

import dev.fraqat.deploy.core.Json
import dev.fraqat.deploy.core.Schemas
import dev.fraqat.deploy.core.asObject
import java.io.File
import kotlin.system.exitProcess

/**
 * The core's tests as a plain program (no test framework is available offline):
 * `java -cp core-tests.jar dev.fraqat.deploy.core.test.RunnerKt --repo <repository root> [--out <dir>]`.
 * It prints one line per test and closes with "N passed, M failed"; the exit code is 1 when any failed.
 * With `--out`, files the Python side checks too (results, status, images) are written there.
 */
class Context(val repo: File, val out: File?) {
    val examples = File(repo, "fraqat_deploy/device/schemas/examples")
    val schemas: Schemas by lazy { Schemas.fromDirectory(File(repo, "fraqat_deploy/device/schemas")) }

    fun example(name: String): Map<String, Any?> = asObject(Json.parse(File(examples, "$name.json").readText()), name)

    /** A copy of a parsed JSON value that can be changed. */
    @Suppress("UNCHECKED_CAST")
    fun <T> copy(value: T): T = Json.parse(Json.write(value)) as T

    fun keep(name: String, bytes: ByteArray) {
        out?.let { File(it, name).apply { parentFile.mkdirs() }.writeBytes(bytes) }
    }

    fun tempDir(name: String): File = kotlin.io.path.createTempDirectory("fraqat-$name").toFile().also { it.deleteOnExit() }
}

class Suite {
    val tests = ArrayList<Pair<String, Context.() -> Unit>>()

    fun test(name: String, body: Context.() -> Unit) {
        tests.add(name to body)
    }
}

class AssertionFailed(message: String) : Exception(message)

fun fail(message: String): Nothing = throw AssertionFailed(message)

fun check(condition: Boolean, message: () -> String) {
    if (!condition) fail(message())
}

fun <T> assertEquals(expected: T, actual: T, what: String = "value") {
    if (expected != actual) fail("$what: expected $expected, got $actual")
}

fun assertClose(expected: Double, actual: Double, tolerance: Double, what: String = "value") {
    if (!(kotlin.math.abs(expected - actual) <= tolerance)) fail("$what: expected $expected, got $actual (tolerance $tolerance)")
}

fun assertAllClose(expected: List<Double>, actual: List<Double>, tolerance: Double, what: String) {
    assertEquals(expected.size, actual.size, "$what size")
    expected.indices.forEach { assertClose(expected[it], actual[it], tolerance, "$what[$it]") }
}

inline fun <reified E : Throwable> assertThrows(what: String, body: () -> Unit): E {
    try {
        body()
    } catch (e: Throwable) {
        if (e is E) return e
        fail("$what: expected ${E::class.simpleName}, got ${e::class.simpleName}: ${e.message}")
    }
    fail("$what: expected ${E::class.simpleName}, nothing was thrown")
}

fun doubles(v: Any?): List<Double> = (v as List<*>).map { (it as Number).toDouble() }

fun main(args: Array<String>) {
    var repo: File? = null
    var out: File? = null
    var filter: String? = null
    var i = 0
    while (i < args.size) {
        when (args[i]) {
            "--repo" -> repo = File(args[++i])
            "--out" -> out = File(args[++i]).apply { mkdirs() }
            "--only" -> filter = args[++i]
            else -> {
                System.err.println("unknown argument ${args[i]}")
                exitProcess(2)
            }
        }
        i++
    }
    val context = Context((repo ?: File("../..")).absoluteFile.normalize(), out)
    val suite = Suite()
    jsonTests(suite)
    protocolTests(suite)
    numberTests(suite)
    tokenizerTests(suite)
    pipelineTests(suite)
    gemmaTests(suite)
    engineTests(suite)
    ortTests(suite)
    var passed = 0
    var failed = 0
    for ((name, body) in suite.tests) {
        if (filter != null && !name.contains(filter)) continue
        val started = System.nanoTime()
        try {
            context.body()
            passed++
            println("PASS  $name (${(System.nanoTime() - started) / 1_000_000} ms)")
        } catch (e: Throwable) {
            failed++
            println("FAIL  $name: ${e::class.simpleName}: ${e.message}")
            if (e !is AssertionFailed) e.printStackTrace(System.out)
        }
    }
    println("$passed passed, $failed failed")
    exitProcess(if (failed == 0 && passed > 0) 0 else 1)
}
