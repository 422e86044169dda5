// A round trip with a NATS client nobody here wrote (nats-py, tests/nats/foreign_client.py)
// against a real nats-server, in both directions, exactly as docs/wire-format.md's NATS section
// describes the wire: an event it publishes is consumed by our backend with every attribute
// intact, and what our backend publishes it reads with the documented headers.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "eventbus/clock.h"
#include "eventbus/harness/nats_server.h"
#include "eventbus/nats/nats_event_stream.h"
#include "gtest/gtest.h"

namespace eventbus::nats {
namespace {

using harness::NatsServer;

// The venv scripts/install-deps.sh makes for nats-py (EVENTBUS_PY_VENV overrides it).
std::string ForeignPython() {
  if (const char* venv = std::getenv("EVENTBUS_PY_VENV"); venv != nullptr && *venv != '\0') {
    return absl::StrCat(venv, "/bin/python");
  }
  const char* home = std::getenv("HOME");
  return absl::StrCat(home != nullptr ? home : "", "/.cache/eventbus/venv/bin/python");
}

std::string ShellQuote(absl::string_view arg) {
  std::string out = "'";
  for (char c : arg) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

// Runs foreign_client.py with `args`; its last stdout line parsed as JSON (null on failure).
nlohmann::json RunForeignClient(const std::vector<std::string>& args) {
  std::string command =
      absl::StrCat(ShellQuote(ForeignPython()), " ", ShellQuote(EVENTBUS_NATS_FOREIGN_CLIENT));
  for (const auto& arg : args) absl::StrAppend(&command, " ", ShellQuote(arg));
  command += " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr) << command;
  if (pipe == nullptr) return nullptr;
  std::string out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  const int rc = ::pclose(pipe);
  // A missing venv is a failure that says how to get it, never a skip.
  EXPECT_EQ(rc, 0) << command << ":\n"
                   << out << "\n(nats-py missing? run scripts/install-deps.sh)";
  if (rc != 0) return nullptr;
  absl::string_view text = absl::StripTrailingAsciiWhitespace(out);
  const size_t last = text.rfind('\n');
  if (last != absl::string_view::npos) text.remove_prefix(last + 1);
  nlohmann::json parsed = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(parsed.is_discarded()) << out;
  return parsed.is_discarded() ? nlohmann::json() : parsed;
}

class NatsForeignClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = NatsServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(server).value();
    NatsOptions options;
    options.url = server_->url();
    auto stream = NewNatsEventStream(options);
    ASSERT_TRUE(stream.ok()) << stream.status();
    stream_ = std::move(stream).value();
  }
  void TearDown() override {
    if (sub_ != nullptr) {
      EXPECT_TRUE(sub_->Close().ok());
    }
    sub_.reset();
    stream_.reset();
  }

  std::unique_ptr<NatsServer> server_;
  std::unique_ptr<EventStream> stream_;
  std::unique_ptr<Subscription> sub_;
};

TEST_F(NatsForeignClientTest, AnEventPublishedByNatsPyIsConsumedWithEveryAttribute) {
  const std::string name = "foreign.in";
  // Our subscribe creates the JetStream stream (foreign_in, subject foreign.in) the docs name.
  auto sub = stream_->Subscribe({.stream = name, .group = "workers", .consumer = "c1"});
  ASSERT_TRUE(sub.ok()) << sub.status();
  sub_ = std::move(sub).value();

  const nlohmann::json ack = RunForeignClient({"publish", server_->url(), name});
  ASSERT_TRUE(ack.is_object());
  EXPECT_EQ(ack.value("stream", ""), JetStreamName(name));

  std::vector<Delivery> got;
  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  while (got.empty() && absl::Now() < deadline) {
    auto batch = sub_->Fetch(1, absl::Milliseconds(500));
    ASSERT_TRUE(batch.ok()) << batch.status();
    got = std::move(batch).value();
  }
  ASSERT_EQ(got.size(), 1u) << "nothing consumed (dead-lettered as malformed?)";
  const Event& e = got[0].event;
  EXPECT_EQ(e.spec_version(), "1.0");
  EXPECT_EQ(e.id(), "py-order-7");
  EXPECT_EQ(e.source(), "/nats-py");
  EXPECT_EQ(e.type(), "com.example.order");
  EXPECT_EQ(e.subject(), "order/7");
  EXPECT_EQ(EventTime(e), absl::FromUnixMillis(1714564800125));  // 14:00:00.125+02:00
  EXPECT_EQ(e.data_content_type(), "application/json");
  EXPECT_EQ(e.data_schema(), "https://example.com/order.json");
  EXPECT_EQ(e.key(), "customer-3");
  EXPECT_EQ(e.data(), R"({"order":7,"items":["a","b"]})");
  // ce-<name> headers become the event's headers; Nats-Msg-Id is not part of the event.
  EXPECT_EQ(e.headers().size(), 2u);
  EXPECT_EQ(e.headers().count("traceparent") ? e.headers().at("traceparent") : "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  EXPECT_EQ(e.headers().count("tenant") ? e.headers().at("tenant") : "", "acme");
  EXPECT_EQ(got[0].id, absl::StrCat(ack.value("seq", 0)));
  EXPECT_EQ(got[0].delivery_count, 1);
  ASSERT_TRUE(sub_->Ack(got[0]).ok());
}

TEST_F(NatsForeignClientTest, WhatWePublishIsReadByNatsPyWithTheDocumentedHeaders) {
  const std::string name = "foreign.out";
  Event event = MakeEvent("com.example.shipped", "/eventbus/test", "\x01\x02 raw bytes\xff");
  event.set_id("ours-42");
  event.set_subject("parcel/9");
  event.set_data_content_type("application/octet-stream");
  event.set_data_schema("https://example.com/parcel");
  event.set_key("customer-9");
  SetEventTime(event, absl::FromUnixMillis(1714564800125));
  (*event.mutable_headers())["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  (*event.mutable_headers())["empty"] = "";
  auto receipt = stream_->PublishAndWait(name, event);
  ASSERT_TRUE(receipt.ok()) << receipt.status();

  const nlohmann::json msg = RunForeignClient({"read", server_->url(), JetStreamName(name), name});
  ASSERT_TRUE(msg.is_object());
  EXPECT_EQ(msg.value("subject", ""), name);
  const std::map<std::string, std::string> expected = {
      {"ce-specversion", "1.0"},
      {"ce-id", "ours-42"},
      {"ce-source", "/eventbus/test"},
      {"ce-type", "com.example.shipped"},
      {"ce-subject", "parcel/9"},
      {"ce-time", "2024-05-01T12:00:00.125Z"},  // UTC, only the fractional digits needed
      {"Content-Type", "application/octet-stream"},
      {"ce-dataschema", "https://example.com/parcel"},
      {"ce-partitionkey", "customer-9"},
      {"ce-traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
      {"ce-empty", "\"\""},  // an empty value travels as two double quotes
      {"Nats-Msg-Id", "ours-42"},
  };
  const std::map<std::string, std::string> headers =
      msg.value("headers", nlohmann::json::object()).get<std::map<std::string, std::string>>();
  EXPECT_EQ(headers, expected);
  std::string data;
  ASSERT_TRUE(absl::Base64Unescape(msg.value("data_base64", ""), &data));
  EXPECT_EQ(data, event.data()) << "the payload is the raw data: no base64, no JSON wrapping";
}

}  // namespace
}  // namespace eventbus::nats
