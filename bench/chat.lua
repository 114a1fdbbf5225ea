-- wrk script: POST a realistic ~1 KB OpenAI chat request (system prompt, two
-- user turns with code, one assistant turn). Used by bench/proxy.sh.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"auto","max_tokens":512,"temperature":0.2,"messages":[' ..
  '{"role":"system","content":"You are a careful senior engineer. Answer concisely, show code when it helps, and state your assumptions."},' ..
  '{"role":"user","content":"I have a C service that parses JSON requests with cJSON and forwards them with libcurl. Under load (about 3000 requests per second on two cores) the p99 latency jumps from 4 ms to 80 ms. perf shows a lot of time in malloc and free, and in curl_easy_init. Here is the hot path:\\n```c\\nstatic int forward(const char *body, size_t len) {\\n    cJSON *j = cJSON_ParseWithLength(body, len);\\n    CURL *c = curl_easy_init();\\n    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);\\n    int rc = curl_easy_perform(c);\\n    curl_easy_cleanup(c);\\n    cJSON_Delete(j);\\n    return rc;\\n}\\n```\\nWhat are the top three changes you would make, in order, and roughly how much would each one buy? Should I switch to the multi interface, reuse handles in a pool, or both?"},' ..
  '{"role":"assistant","content":"Reuse easy handles first; then move to curl_multi with an event loop."},' ..
  '{"role":"user","content":"Thanks. Can you sketch the pooled version and explain how connection reuse interacts with HTTP/2 multiplexing? Keep it under 40 lines."}]}'
