# Writes OUTPUT, a header with each file of the dashboard as a string constant, at build time:
#   cmake -DUI_DIR=... -DOUTPUT=... -P embed_ui.cmake
# A raw string literal holds the file as is; its delimiter never occurs in the files.
set(content "#pragma once\n// Generated from executor/service/ui by embed_ui.cmake: do not edit.\n#include \"absl/strings/string_view.h\"\n")
foreach(pair "index.html;kDashboardIndexHtml" "app.js;kDashboardAppJs" "style.css;kDashboardStyleCss")
  list(GET pair 0 file)
  list(GET pair 1 name)
  file(READ "${UI_DIR}/${file}" text)
  string(FIND "${text}" ")eventbus_ui\"" clash)
  if(NOT clash EQUAL -1)
    message(FATAL_ERROR "${file} contains the raw-string delimiter )eventbus_ui\"")
  endif()
  string(APPEND content "inline constexpr absl::string_view ${name} = R\"eventbus_ui(${text})eventbus_ui\";\n")
endforeach()
file(WRITE "${OUTPUT}.tmp" "${content}")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
