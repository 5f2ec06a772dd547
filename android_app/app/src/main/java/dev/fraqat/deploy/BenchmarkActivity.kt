package dev.fraqat.deploy

import android.app.Activity
import android.os.Build
import android.os.Bundle
import android.util.Log
import android.view.WindowManager
import android.widget.ScrollView
import android.widget.TextView
import dev.fraqat.deploy.core.BenchmarkEngine
import dev.fraqat.deploy.core.DeviceInfo
import dev.fraqat.deploy.core.Protocol
import dev.fraqat.deploy.core.Schemas
import java.io.File
import kotlin.concurrent.thread

/**
 * The benchmark mode the CLI drives: `am start -S -n dev.fraqat.deploy/.BenchmarkActivity --es request <path>`,
 * `<path>` being `files/runs/<id>/request.json` in the app's external files folder. The work runs on a background
 * thread in [BenchmarkEngine] (core); this activity only shows its progress and keeps the screen on meanwhile.
 *
 * A request runs once ([RunGuard]): recreating the activity (rotation, theme change) shows the run's progress in
 * logcat instead of starting it again. Anything that fails before the engine runs ends in `result.json` too
 * ([StartFailure]).
 */
class BenchmarkActivity : Activity() {
    private lateinit var log: TextView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        window.addFlags(WindowManager.LayoutParams.FLAG_KEEP_SCREEN_ON)
        log = TextView(this).apply { setPadding(32, 32, 32, 32); setTextIsSelectable(true) }
        setContentView(ScrollView(this).apply { addView(log) })
        val path = intent.getStringExtra(Protocol.REQUEST_EXTRA)
        if (path == null) {
            show("start me from the CLI (fraqat-deploy bench), or with:\nam start -S -n ${Protocol.PACKAGE}/${Protocol.ACTIVITY} --es request <request.json>")
            return
        }
        val filesDir = getExternalFilesDir(null) ?: run {
            show("no external files folder: is shared storage mounted?")
            return
        }
        val request = File(path)
        if (!request.canonicalPath.startsWith(filesDir.canonicalPath + File.separator)) {
            // never read (or write next to) files outside the app's own folder
            show("refusing $path: requests live under ${filesDir.absolutePath}")
            Log.e(TAG, "request outside the files folder: $path")
            return
        }
        val first = try {
            RunGuard.claim(request)
        } catch (e: java.io.IOException) {
            show("cannot claim $path: ${e.message}")
            Log.e(TAG, "cannot write the run marker beside $path", e)
            return
        }
        if (!first) {
            show("request ${request.parentFile?.name} is already running or done (see logcat, tag $TAG)")
            Log.i(TAG, "not starting $path again (activity recreated)")
            return
        }
        thread(name = "fraqat-benchmark") {
            // memory peaks sampled every 200 ms while the request runs (DMA-BUF, native heap), see AndroidProbe
            val probe = AndroidProbe(this, sampleEveryMs = 200)
            val result = try {
                val schemas = Schemas.load { name -> assets.open("schemas/$name").bufferedReader().use { it.readText() } }
                val engine = BenchmarkEngine(filesDir, request, HtpBackend(this), schemas, probe, log = { line ->
                    Log.i(TAG, line)
                    runOnUiThread { show(line) }
                })
                engine.run()
            } catch (t: Throwable) {
                // schemas missing from the assets, libonnxruntime.so not loading, ...: still a result.json
                Log.e(TAG, "the benchmark did not start", t)
                StartFailure.write(request, t, StartFailure.device(::buildInfo))
            } finally {
                probe.close()
            }
            Log.i(TAG, "wrote $result")
            runOnUiThread {
                show("wrote $result")
                finish()
            }
        }
    }

    private fun buildInfo() = DeviceInfo(Build.MANUFACTURER, Build.MODEL, Build.SOC_MODEL, Build.VERSION.SDK_INT, "htp", null, null)

    private fun show(line: String) {
        log.append(line + "\n")
    }

    companion object {
        private const val TAG = "fraqat"
    }
}
