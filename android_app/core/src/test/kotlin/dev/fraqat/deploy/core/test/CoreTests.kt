package dev.fraqat.deploy.core.test

import dev.fraqat.deploy.core.Json
import dev.fraqat.deploy.core.Schemas
import dev.fraqat.deploy.core.asObject
import org.junit.jupiter.api.Assertions
import org.junit.jupiter.api.DynamicTest
import org.junit.jupiter.api.DynamicTest.dynamicTest
import org.junit.jupiter.api.TestFactory
import java.io.File

/**
 * The core's tests, run by JUnit (the platform's console launcher, see build-and-test.sh; `./gradlew :core:test`).
 * Each area registers named tests on a [Suite]; each becomes one JUnit dynamic test, so the names can say
 * `request.json`. System properties: `fraqat.repo` the repository root (required), `fraqat.out` a folder that keeps
 * the files the Python side checks too (results, status, images), `fraqat.only` runs the tests whose name contains it.
 */
class CoreTests {
    @TestFactory fun json() = dynamic(::jsonTests)

    @TestFactory fun protocol() = dynamic(::protocolTests)

    @TestFactory fun numbers() = dynamic(::numberTests)

    @TestFactory fun tokenizers() = dynamic(::tokenizerTests)

    @TestFactory fun pipeline() = dynamic(::pipelineTests)

    @TestFactory fun gemma() = dynamic(::gemmaTests)

    @TestFactory fun engine() = dynamic(::engineTests)

    @TestFactory fun ort() = dynamic(::ortTests)

    private fun dynamic(register: (Suite) -> Unit): List<DynamicTest> {
        val suite = Suite().also(register)
        val only = System.getProperty("fraqat.only")
        return suite.tests.filter { only == null || it.first.contains(only) }.map { (name, body) -> dynamicTest(name) { context.body() } }
    }

    companion object {
        val context: Context by lazy {
            val repo = System.getProperty("fraqat.repo") ?: error("set -Dfraqat.repo=<repository root> (build-and-test.sh does)")
            Context(File(repo).absoluteFile.normalize(), System.getProperty("fraqat.out")?.let { File(it).apply { mkdirs() } })
        }
    }
}

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

/** JUnit's assertEquals on the values as objects (Kotlin would otherwise pick among its primitive overloads). */
fun <T> assertEquals(expected: T, actual: T, what: String = "value") = Assertions.assertEquals(expected as Any?, actual as Any?, what)

fun assertClose(expected: Double, actual: Double, tolerance: Double, what: String = "value") {
    Assertions.assertTrue(kotlin.math.abs(expected - actual) <= tolerance) { "$what: expected $expected, got $actual (tolerance $tolerance)" }
}

fun assertAllClose(expected: List<Double>, actual: List<Double>, tolerance: Double, what: String) {
    assertEquals(expected.size, actual.size, "$what size")
    expected.indices.forEach { assertClose(expected[it], actual[it], tolerance, "$what[$it]") }
}

fun doubles(v: Any?): List<Double> = (v as List<*>).map { (it as Number).toDouble() }
