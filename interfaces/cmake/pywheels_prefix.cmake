# Shared by the interface packages under interfaces/ (ROS_STACK.md, recipe B). In a pip build (no sourced ROS
# environment: AMENT_PREFIX_PATH unset) the ros-* build wheels in pip's isolated build env are the ROS prefix:
# find it, put it on the CMake and ament search paths, and mend the include directories those wheels export.
# Under colcon in a ROS 2 workspace (AMENT_PREFIX_PATH set) nothing changes.
if(NOT DEFINED ENV{AMENT_PREFIX_PATH})
  execute_process(COMMAND "${Python3_EXECUTABLE}" -c
    "import ament_package, pathlib; print(pathlib.Path(ament_package.__file__).resolve().parents[4])"
    OUTPUT_VARIABLE _ros_prefix OUTPUT_STRIP_TRAILING_WHITESPACE COMMAND_ERROR_IS_FATAL ANY)
  list(PREPEND CMAKE_PREFIX_PATH "${_ros_prefix}")
  set(ENV{AMENT_PREFIX_PATH} "${_ros_prefix}")

  # The ros-* message wheels export <pkg>__rosidl_generator_py targets whose include directories point
  # at the manylinux build container (/opt/python/...). Rewrite them to this interpreter's include dirs
  # once all packages are found (ROS_STACK.md, Q1 "Baked-in path bug").
  if(NOT Python3_NumPy_INCLUDE_DIRS)
    find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
  endif()
  function(_pywheels_fix_imported_py_targets)
    get_directory_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" IMPORTED_TARGETS)
    foreach(_t IN LISTS _targets)
      get_target_property(_inc ${_t} INTERFACE_INCLUDE_DIRECTORIES)
      if(_inc AND "${_inc}" MATCHES "/opt/python/")
        set_target_properties(${_t} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES
          "${Python3_INCLUDE_DIRS};${Python3_NumPy_INCLUDE_DIRS}")
      endif()
    endforeach()
  endfunction()
  cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _pywheels_fix_imported_py_targets)
endif()
