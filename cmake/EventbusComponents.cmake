# The installed package is a set of components: find_package(eventbus COMPONENTS core redis)
# loads only those (and what they require), and looks only for the dependencies they need.
#
# A library becomes a component with one call in its own CMakeLists.txt, instead of install():
#
#   eventbus_component(redis TARGETS eventbus_redis REQUIRES core
#     PRIVATE_PKG_CONFIG "HIREDIS hiredis" PC_REQUIRES_PRIVATE hiredis)
#
#   TARGETS                the libraries (and their headers' include/ folder, next to the
#                          calling CMakeLists.txt, when it exists) the component installs
#   REQUIRES               components it needs besides those its targets link (which are
#                          found from the targets' link libraries at the end of configure)
#   PACKAGES               find_dependency() arguments its public interface needs, e.g. "GTest"
#   PRIVATE_PACKAGES       find_dependency() arguments needed only to link a static library
#                          (omitted from a shared build's package), e.g. "CURL"
#   PRIVATE_PKG_CONFIG     "<PREFIX> <module>": pkg_check_modules(<PREFIX> IMPORTED_TARGET
#                          <module>) for a PRIVATE PkgConfig::<PREFIX> link of a static library
#   PC_REQUIRES            pkg-config modules for Requires: of eventbus-<name>.pc
#   PC_REQUIRES_PRIVATE    ... for Requires.private:
#   BACKEND                the component is an EventStream backend registered under <name>
#                          (RegisterBuiltinBackends, EVENTBUS_HAS_<NAME>_BACKEND)
#   DEFAULT_VISIBILITY     export every symbol, not only the public headers' (a test library
#                          whose GoogleTest fixtures and registrations the test binary shares)
#
# eventbus_write_package() (top-level CMakeLists.txt, after every component) writes the
# package configuration, one targets file and one dependencies file per component, and the
# pkg-config files. Everything is relative to the install prefix: the package can be moved.

set(EVENTBUS_PACKAGE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/eventbus")

function(eventbus_component name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "BACKEND;DEFAULT_VISIBILITY"
    "" "TARGETS;REQUIRES;PACKAGES;PRIVATE_PACKAGES;PRIVATE_PKG_CONFIG;PC_REQUIRES;PC_REQUIRES_PRIVATE")
  if(arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "eventbus_component(${name}): unknown arguments ${arg_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT arg_TARGETS)
    message(FATAL_ERROR "eventbus_component(${name}): no TARGETS")
  endif()
  get_property(known GLOBAL PROPERTY EVENTBUS_COMPONENTS)
  if(name IN_LIST known)
    message(FATAL_ERROR "eventbus_component(${name}): declared twice")
  endif()
  # Declaration order is load order in the package configuration, so requirements come first.
  foreach(required IN LISTS arg_REQUIRES)
    if(NOT required IN_LIST known)
      message(FATAL_ERROR "eventbus_component(${name}) requires '${required}', which is not "
                          "declared (yet): declare it first")
    endif()
  endforeach()
  set_property(GLOBAL APPEND PROPERTY EVENTBUS_COMPONENTS ${name})
  if(arg_BACKEND)
    set_property(GLOBAL APPEND PROPERTY EVENTBUS_BACKEND_COMPONENTS ${name})
  endif()
  foreach(key REQUIRES TARGETS PC_REQUIRES PC_REQUIRES_PRIVATE)
    set_property(GLOBAL PROPERTY EVENTBUS_COMPONENT_${name}_${key} "${arg_${key}}")
  endforeach()
  foreach(target IN LISTS arg_TARGETS)
    set_property(GLOBAL PROPERTY EVENTBUS_COMPONENT_OF_${target} ${name})
  endforeach()

  # The dependencies file: what find_package(eventbus COMPONENTS <name>) looks for. A missing
  # dependency marks the component not found (with the reason) instead of failing outright, so
  # an optional component does not stop the others.
  set(deps "# Dependencies of eventbus component '${name}' (generated).\n")
  set(packages ${arg_PACKAGES})
  if(NOT BUILD_SHARED_LIBS)
    list(APPEND packages ${arg_PRIVATE_PACKAGES})
  endif()
  foreach(package IN LISTS packages)
    separate_arguments(package_args UNIX_COMMAND "${package}")
    list(GET package_args 0 package_name)
    string(APPEND deps
      "find_package(${package} QUIET)\n"
      "if(NOT ${package_name}_FOUND)\n"
      "  set(_eventbus_missing \"${package_name} (find_package(${package}))\")\n"
      "  return()\n"
      "endif()\n")
  endforeach()
  if(NOT BUILD_SHARED_LIBS AND arg_PRIVATE_PKG_CONFIG)
    string(APPEND deps "find_package(PkgConfig QUIET)\n"
      "if(NOT PKG_CONFIG_FOUND)\n"
      "  set(_eventbus_missing \"pkg-config\")\n"
      "  return()\n"
      "endif()\n")
    foreach(spec IN LISTS arg_PRIVATE_PKG_CONFIG)
      separate_arguments(spec_args UNIX_COMMAND "${spec}")
      list(GET spec_args 0 prefix)
      list(GET spec_args 1 module)
      string(APPEND deps
        "if(NOT TARGET PkgConfig::${prefix})\n"
        "  pkg_check_modules(${prefix} QUIET IMPORTED_TARGET ${module})\n"
        "  if(NOT ${prefix}_FOUND)\n"
        "    set(_eventbus_missing \"${module} (pkg-config)\")\n"
        "    return()\n"
        "  endif()\n"
        "endif()\n")
    endforeach()
  endif()
  file(WRITE "${PROJECT_BINARY_DIR}/package/eventbus-${name}-dependencies.cmake" "${deps}")

  foreach(target IN LISTS arg_TARGETS)
    # No <target>_EXPORTS definition (visibility needs none on ELF): a static and a shared
    # build then compile identically, and share the compiler cache.
    set_target_properties(${target} PROPERTIES DEFINE_SYMBOL "")
    if(arg_DEFAULT_VISIBILITY)
      set_target_properties(${target} PROPERTIES CXX_VISIBILITY_PRESET default)
    endif()
    get_target_property(type ${target} TYPE)
    if(type STREQUAL "SHARED_LIBRARY")
      # libeventbus_<x>.so.<major>.<minor> with SONAME .so.<major>.<minor>: 0.x releases break
      # the ABI in minor versions (SameMinorVersion compatibility, as the package version file).
      set_target_properties(${target} PROPERTIES
        VERSION ${PROJECT_VERSION}
        SOVERSION ${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR})
    endif()
  endforeach()
  install(TARGETS ${arg_TARGETS} EXPORT eventbus-${name}-targets
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
    RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  if(EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/include")
    install(DIRECTORY "${CMAKE_CURRENT_SOURCE_DIR}/include/" DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  endif()
endfunction()

# eventbus-<name>.pc for each component, relocatable (paths relative to the .pc file).
function(_eventbus_write_pkg_config name)
  get_property(requires GLOBAL PROPERTY EVENTBUS_COMPONENT_${name}_REQUIRES)
  get_property(targets GLOBAL PROPERTY EVENTBUS_COMPONENT_${name}_TARGETS)
  get_property(pc_requires GLOBAL PROPERTY EVENTBUS_COMPONENT_${name}_PC_REQUIRES)
  get_property(pc_private GLOBAL PROPERTY EVENTBUS_COMPONENT_${name}_PC_REQUIRES_PRIVATE)
  set(requires_line "")
  foreach(required IN LISTS requires)
    list(APPEND requires_line "eventbus-${required}")
  endforeach()
  list(APPEND requires_line ${pc_requires})
  list(JOIN requires_line ", " requires_line)
  list(JOIN pc_private ", " private_line)
  set(libs "")
  foreach(target IN LISTS targets)
    string(APPEND libs " -l$<TARGET_FILE_BASE_NAME:${target}>")
  endforeach()
  # pcfiledir is <prefix>/<libdir>/pkgconfig: climb back to the prefix.
  file(RELATIVE_PATH to_prefix "/root/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/root")
  file(GENERATE OUTPUT "${PROJECT_BINARY_DIR}/package/eventbus-${name}.pc" CONTENT
"prefix=\${pcfiledir}/${to_prefix}
libdir=\${prefix}/${CMAKE_INSTALL_LIBDIR}
includedir=\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}

Name: eventbus-${name}
Description: eventbus component ${name}
Version: ${PROJECT_VERSION}
Requires: ${requires_line}
Requires.private: ${private_line}
Cflags: -I\${includedir}
Libs: -L\${libdir}${libs}
")
  install(FILES "${PROJECT_BINARY_DIR}/package/eventbus-${name}.pc"
    DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endfunction()

# Adds to REQUIRES every component whose targets `name`'s targets link, so that a link added
# later (executor -> taskstore) cannot be forgotten in the package; they must be declared
# before `name`, since the package configuration loads components in declaration order.
function(_eventbus_derive_requires name)
  get_property(components GLOBAL PROPERTY EVENTBUS_COMPONENTS)
  list(FIND components ${name} position)
  get_property(requires GLOBAL PROPERTY EVENTBUS_COMPONENT_${name}_REQUIRES)
  get_property(targets GLOBAL PROPERTY EVENTBUS_COMPONENT_${name}_TARGETS)
  foreach(target IN LISTS targets)
    get_target_property(links ${target} LINK_LIBRARIES)
    if(NOT links)
      continue()
    endif()
    foreach(link IN LISTS links)
      if(NOT TARGET "${link}")
        continue()
      endif()
      get_target_property(aliased "${link}" ALIASED_TARGET)
      if(aliased)
        set(link ${aliased})
      endif()
      get_property(owner GLOBAL PROPERTY EVENTBUS_COMPONENT_OF_${link})
      if(NOT owner OR owner STREQUAL name OR owner IN_LIST requires)
        continue()
      endif()
      list(FIND components ${owner} owner_position)
      if(owner_position GREATER position)
        message(FATAL_ERROR "eventbus component '${name}' links ${link} of component '${owner}', "
                            "which is declared after it: declare '${owner}' first")
      endif()
      list(APPEND requires ${owner})
    endforeach()
  endforeach()
  set_property(GLOBAL PROPERTY EVENTBUS_COMPONENT_${name}_REQUIRES "${requires}")
endfunction()

# Every eventbus_* library of the product must belong to a component, or the package silently
# lacks it (e.g. a new folder that kept an old install(TARGETS ... EXPORT) line). Test, bench
# and the service's and the CLI's internal libraries are not part of the package.
function(_eventbus_check_all_libraries_are_components dir)
  get_property(targets DIRECTORY "${dir}" PROPERTY BUILDSYSTEM_TARGETS)
  foreach(target IN LISTS targets)
    get_target_property(type ${target} TYPE)
    get_property(owner GLOBAL PROPERTY EVENTBUS_COMPONENT_OF_${target})
    if(target MATCHES "^eventbus_" AND type MATCHES "_LIBRARY$" AND NOT type STREQUAL "INTERFACE_LIBRARY"
       AND NOT owner)
      file(RELATIVE_PATH where "${PROJECT_SOURCE_DIR}" "${dir}")
      if(where MATCHES "^tests/conformance(/|$)" OR NOT where MATCHES "^(tests|bench|executor/service|cli)(/|$)")
        message(FATAL_ERROR "library ${target} (${where}/CMakeLists.txt) is in no package component: "
                            "declare it there with eventbus_component(<name> TARGETS ${target}) "
                            "(cmake/EventbusComponents.cmake)")
      endif()
    endif()
  endforeach()
  get_property(subdirs DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
  foreach(subdir IN LISTS subdirs)
    _eventbus_check_all_libraries_are_components("${subdir}")
  endforeach()
endfunction()

function(eventbus_write_package)
  _eventbus_check_all_libraries_are_components("${PROJECT_SOURCE_DIR}")
  get_property(components GLOBAL PROPERTY EVENTBUS_COMPONENTS)
  foreach(name IN LISTS components)
    _eventbus_derive_requires(${name})
  endforeach()
  get_property(backends GLOBAL PROPERTY EVENTBUS_BACKEND_COMPONENTS)
  list(SORT backends)
  # Code for eventbusConfig.cmake.in: what each component requires.
  set(EVENTBUS_PACKAGE_COMPONENTS "${components}")
  set(EVENTBUS_PACKAGE_REQUIRES "")
  foreach(name IN LISTS components)
    get_property(requires GLOBAL PROPERTY EVENTBUS_COMPONENT_${name}_REQUIRES)
    string(APPEND EVENTBUS_PACKAGE_REQUIRES "set(_eventbus_requires_${name} \"${requires}\")\n")
    install(EXPORT eventbus-${name}-targets NAMESPACE eventbus:: DESTINATION ${EVENTBUS_PACKAGE_DIR})
    install(FILES "${PROJECT_BINARY_DIR}/package/eventbus-${name}-dependencies.cmake"
      DESTINATION ${EVENTBUS_PACKAGE_DIR})
    _eventbus_write_pkg_config(${name})
  endforeach()
  if(BUILD_SHARED_LIBS)
    set(EVENTBUS_PACKAGE_LIBRARY_TYPE SHARED)
  else()
    set(EVENTBUS_PACKAGE_LIBRARY_TYPE STATIC)
  endif()
  set(EVENTBUS_PACKAGE_BACKENDS "${backends}")
  configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/eventbusConfig.cmake.in"
    "${PROJECT_BINARY_DIR}/package/eventbusConfig.cmake"
    INSTALL_DESTINATION ${EVENTBUS_PACKAGE_DIR})
  write_basic_package_version_file("${PROJECT_BINARY_DIR}/package/eventbusConfigVersion.cmake"
    COMPATIBILITY SameMinorVersion)
  install(FILES "${PROJECT_BINARY_DIR}/package/eventbusConfig.cmake"
    "${PROJECT_BINARY_DIR}/package/eventbusConfigVersion.cmake"
    DESTINATION ${EVENTBUS_PACKAGE_DIR})
endfunction()
