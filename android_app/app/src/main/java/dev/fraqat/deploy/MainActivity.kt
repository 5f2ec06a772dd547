package dev.fraqat.deploy

import android.app.Activity
import android.graphics.Bitmap
import android.os.Bundle
import android.text.InputType
import android.view.View
import android.widget.AdapterView
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.ImageView
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.TextView
import dev.fraqat.deploy.core.BenchError
import dev.fraqat.deploy.core.ByteTokenizer
import dev.fraqat.deploy.core.Catalog
import dev.fraqat.deploy.core.ComponentRunner
import dev.fraqat.deploy.core.ComponentSession
import dev.fraqat.deploy.core.EmbeddingTable
import dev.fraqat.deploy.core.ErrorKind
import dev.fraqat.deploy.core.GemmaDecoder
import dev.fraqat.deploy.core.GemmaSpec
import dev.fraqat.deploy.core.Png
import dev.fraqat.deploy.core.PushedModel
import dev.fraqat.deploy.core.SanaPipeline
import dev.fraqat.deploy.core.Schemas
import dev.fraqat.deploy.core.Tensor
import dev.fraqat.deploy.core.TensorBin
import dev.fraqat.deploy.core.Timed
import dev.fraqat.deploy.core.WordLevelTokenizer
import java.io.File
import java.util.Locale
import java.util.concurrent.Executors

/**
 * The demo screen: pick a compiled model the CLI pushed (a folder set under files/models, with the latest request
 * that used it for its pipeline settings), type a prompt, steps and seed, and see the image with per-step and total
 * latency and peak memory. A Gemma model gets a minimal chat instead (one prompt at a time, tokens per second).
 */
class MainActivity : Activity() {
    private val worker = Executors.newSingleThreadExecutor()
    private lateinit var files: File
    private lateinit var backend: HtpBackend
    private lateinit var probe: AndroidProbe
    private var schemas: Schemas? = null
    private var models: List<PushedModel> = emptyList()
    private var opened: PushedModel? = null
    private val sessions = LinkedHashMap<String, ComponentSession>()
    private var initMs = 0.0

    private lateinit var modelPicker: Spinner
    private lateinit var prompt: EditText
    private lateinit var steps: EditText
    private lateinit var seed: EditText
    private lateinit var go: Button
    private lateinit var image: ImageView
    private lateinit var report: TextView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        files = getExternalFilesDir(null) ?: filesDir
        backend = HtpBackend(this)
        probe = AndroidProbe(this)
        schemas = runCatching { Schemas.load { assets.open("schemas/$it").bufferedReader().use { r -> r.readText() } } }.getOrNull()
        setContentView(layout())
        refresh()
    }

    override fun onDestroy() {
        worker.execute { closeSessions() }
        worker.shutdown()
        super.onDestroy()
    }

    private fun layout(): View {
        val column = LinearLayout(this).apply { orientation = LinearLayout.VERTICAL; setPadding(32, 32, 32, 32) }
        modelPicker = Spinner(this)
        val refresh = Button(this).apply { text = "Refresh models"; setOnClickListener { refresh() } }
        prompt = EditText(this).apply { hint = "prompt"; setSingleLine(false) }
        steps = EditText(this).apply { hint = "steps"; inputType = InputType.TYPE_CLASS_NUMBER }
        seed = EditText(this).apply { hint = "seed"; inputType = InputType.TYPE_CLASS_NUMBER }
        go = Button(this).apply { text = "Generate"; setOnClickListener { generate() } }
        image = ImageView(this).apply { adjustViewBounds = true }
        report = TextView(this).apply { setTextIsSelectable(true); typeface = android.graphics.Typeface.MONOSPACE }
        listOf(modelPicker, refresh, prompt, steps, seed, go, image, report).forEach { column.addView(it) }
        modelPicker.onItemSelectedListener = object : AdapterView.OnItemSelectedListener {
            override fun onItemSelected(parent: AdapterView<*>?, view: View?, position: Int, id: Long) = select(models[position])

            override fun onNothingSelected(parent: AdapterView<*>?) = Unit
        }
        return ScrollView(this).apply { addView(column) }
    }

    private fun refresh() {
        models = Catalog.models(files, schemas)
        modelPicker.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, models.map { it.label })
        go.isEnabled = models.isNotEmpty()
        if (models.isEmpty()) {
            report.text = "No compiled model on this phone yet.\nRun `fraqat-deploy bench <model> --run <run> --device <serial>` once: " +
                "it pushes the model into ${files.absolutePath}/models and its request into runs/."
        }
    }

    private fun select(model: PushedModel) {
        val first = model.request.prompts.firstOrNull()
        prompt.setText(first?.text ?: "")
        seed.setText((first?.seed ?: 0L).toString())
        val sana = model.kind == "sana"
        steps.setText(if (sana) model.request.pipeline.raw["steps"]?.toString() ?: "" else (model.request.pipeline.maxNewTokens ?: 32).toString())
        steps.hint = if (sana) "steps" else "max new tokens"
        seed.visibility = if (sana) View.VISIBLE else View.GONE
        image.visibility = if (sana) View.VISIBLE else View.GONE
        go.text = if (sana) "Generate" else "Send"
        report.text = model.label
    }

    private fun generate() {
        val model = models.getOrNull(modelPicker.selectedItemPosition) ?: return
        val text = prompt.text.toString()
        val count = steps.text.toString().toIntOrNull()?.coerceAtLeast(1) ?: 1
        val seedValue = seed.text.toString().toLongOrNull() ?: 0L
        go.isEnabled = false
        report.text = "opening ${model.name} on the HTP..."
        worker.execute {
            val message = try {
                open(model)
                if (model.kind == "sana") draw(model, text, count, seedValue) else chat(model, text, count)
            } catch (e: BenchError) {
                "${e.kind.json}: ${e.message}"
            } catch (e: OutOfMemoryError) {
                closeSessions()
                "out of memory: ${e.message}"
            } catch (e: Exception) {
                "${e::class.java.simpleName}: ${e.message}"
            }
            runOnUiThread {
                report.text = message
                go.isEnabled = true
            }
        }
    }

    private fun open(model: PushedModel) {
        if (opened == model) return
        closeSessions()
        val started = System.nanoTime()
        for ((name, component) in model.request.components) sessions[name] = backend.open(name, File(files, component.onnx), model.request)
        initMs = (System.nanoTime() - started) / 1e6
        opened = model
    }

    private fun closeSessions() {
        sessions.values.forEach { runCatching { it.close() } }
        sessions.clear()
        opened = null
    }

    private val runner = ComponentRunner { component, feed ->
        val session = sessions[component] ?: throw BenchError(ErrorKind.INVALID_REQUEST, "the model has no '$component' component")
        session.run(feed)
    }

    private fun asset(path: String): String? = runCatching { assets.open(path).bufferedReader().use { it.readText() } }.getOrNull()

    private fun progress(line: String) = runOnUiThread { report.text = line }

    private fun draw(model: PushedModel, text: String, count: Int, seedValue: Long): String {
        val tensors: Map<String, Tensor> = asset("tokenizers/${model.name}.json")?.let { json ->
            Catalog.sanaTensors(model, WordLevelTokenizer.fromTokenizerJson(json), text, seedValue)
        } ?: pushedTensors(model, text, seedValue)
        val pipeline = model.request.pipeline.with("steps" to count)
        val timed = Timed(onCall = { component, n -> if (component == "transformer") progress("step $n / $count") })
        val thermalBefore = probe.thermalStatus()
        val started = System.nanoTime()
        val picture = SanaPipeline.generate(runner, pipeline, tensors, timed)
        val totalMs = (System.nanoTime() - started) / 1e6
        val memory = probe.memory()
        val h = picture.shape[1]
        val w = picture.shape[2]
        val bitmap = Bitmap.createBitmap(Png.argb(picture), w, h, Bitmap.Config.ARGB_8888)
        val scale = maxOf(1, 512 / maxOf(w, h))
        val shown = Bitmap.createScaledBitmap(bitmap, w * scale, h * scale, false)
        runOnUiThread { image.setImageBitmap(shown) }
        val calls = timed.calls
        return buildString {
            appendLine("${model.name}: \"$text\", seed $seedValue, $count steps, ${w}x$h")
            appendLine("total            ${ms(totalMs)}")
            appendLine("open (first use) ${ms(initMs)}")
            calls["text_encoder"]?.let { appendLine("text encoder     ${it.joinToString(" + ") { v -> ms(v) }}") }
            calls["transformer"]?.forEachIndexed { i, v -> appendLine("step ${(i + 1).toString().padStart(3)}         ${ms(v)}") }
            calls["vae_decoder"]?.let { appendLine("VAE decoder      ${ms(it.sum())}") }
            appendLine("peak RSS ${mb(memory.peakRss)}, PSS ${mb(memory.peakPss)}, native heap ${mb(memory.nativeHeap)}, DMA-BUF ${mb(memory.peakDmabuf)}")
            appendLine("thermal status ${thermalBefore ?: "?"} -> ${probe.thermalStatus() ?: "?"}")
            append("QNN ${backend.device.qnnVersion ?: "?"} (model built with ${model.request.qnnVersion ?: "?"}), ONNX Runtime ${backend.device.onnxruntimeVersion ?: "?"}")
        }
    }

    /** Without the model's tokenizer in the app, only the prompt the CLI pushed (its own tensors) can be drawn. */
    private fun pushedTensors(model: PushedModel, text: String, seedValue: Long): Map<String, Tensor> {
        val pushed = model.request.prompts.firstOrNull { it.text == text && it.seed == seedValue }
            ?: throw BenchError(
                ErrorKind.INVALID_REQUEST,
                "the app has no tokenizer for '${model.name}': it can only redraw a pushed prompt with its seed " +
                    "(${model.request.prompts.joinToString { "\"${it.text}\" seed ${it.seed}" }})",
            )
        return pushed.tensors.mapValues { TensorBin.read(File(files, it.value.path), it.value.dtype, it.value.shape.toIntArray()) }
    }

    private fun chat(model: PushedModel, text: String, maxNew: Int): String {
        val json = asset("tokenizers/${model.name}.json")
            ?: throw BenchError(ErrorKind.INVALID_REQUEST, "the app has no tokenizer for '${model.name}'")
        val tokenizer = ByteTokenizer.fromTokenizerJson(json)
        val prefill = sessions["prefill"] ?: throw BenchError(ErrorKind.INVALID_REQUEST, "no prefill graph")
        val decode = sessions["decode"] ?: throw BenchError(ErrorKind.INVALID_REQUEST, "no decode graph")
        val spec = GemmaSpec.of(model.request.pipeline, prefill.inputs, decode.inputs)
        // graphs exported with --embedding host: the token rows come from the pushed table, memory-mapped
        val table = if (!spec.hostEmbedding) {
            null
        } else {
            val entry = model.request.embedding
                ?: throw BenchError(ErrorKind.INVALID_REQUEST, "the Gemma graphs take inputs_embeds but the request names no embedding table")
            EmbeddingTable.open(File(files, entry.path))
        }
        val new = ArrayList<Long>()
        val timed = Timed()
        var firstTokenAt = 0L
        val started = System.nanoTime()
        val tokens = GemmaDecoder.greedy(runner, spec, tokenizer.encode(text), maxNew, model.request.pipeline.eosTokenId, timed, table) { token ->
            if (new.isEmpty()) firstTokenAt = System.nanoTime()
            new.add(token)
            progress(text + tokenizer.decode(new))
        }
        val end = System.nanoTime()
        val decodeSeconds = (end - firstTokenAt) / 1e9
        val rate = if (tokens.size > 1 && decodeSeconds > 0) (tokens.size - 1) / decodeSeconds else 0.0
        val memory = probe.memory()
        return buildString {
            appendLine(text + tokenizer.decode(tokens))
            appendLine()
            appendLine("${tokens.size} new tokens, ${String.format(Locale.ROOT, "%.1f", rate)} tokens/s (decode)")
            appendLine("time to first token ${ms((firstTokenAt - started) / 1e6)}, total ${ms((end - started) / 1e6)}")
            append("peak RSS ${mb(memory.peakRss)}, native heap ${mb(memory.nativeHeap)}")
        }
    }

    private fun ms(v: Double) = String.format(Locale.ROOT, "%8.1f ms", v)

    private fun mb(v: Double?) = v?.let { String.format(Locale.ROOT, "%.0f MB", it) } ?: "?"
}
